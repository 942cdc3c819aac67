// Sessions: a user's (admin) and your own (My account). Ending one ends its tokens at
// their next request.
import { Box, Typography } from '@mui/material';
import {
    BooleanField,
    Button,
    Datagrid,
    DateField,
    FunctionField,
    ListContextProvider,
    ResourceContextProvider,
    TextField,
    useGetList,
    useList,
    useNotify,
    useRecordContext,
    useRefresh,
} from 'react-admin';

import { call } from './api';

const NEWEST_FIRST = { field: 'last_used_at', order: 'DESC' };
const ALL = { page: 1, perPage: 100 };

function EndButton({ basePath }) {
    const record = useRecordContext();
    const notify = useNotify();
    const refresh = useRefresh();
    const end = async event => {
        event.stopPropagation();
        try {
            await call(`${basePath}/${encodeURIComponent(record.id)}`, { method: 'DELETE' });
            notify('Session ended', { type: 'info' });
            refresh();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return <Button label="End" onClick={end} />;
}

// Its own resource (users/5/sessions, users/me/sessions), which the table's buttons and
// access checks read, whatever screen shows it.
export function SessionTable({ basePath, showCurrent = false }) {
    return (
        <ResourceContextProvider value={basePath.slice(1)}>
            <Sessions basePath={basePath} showCurrent={showCurrent} />
        </ResourceContextProvider>
    );
}

function Sessions({ basePath, showCurrent }) {
    const { data = [], isPending, error } = useGetList(basePath.slice(1), {
        pagination: ALL,
        sort: NEWEST_FIRST,
    });
    const listContext = useList({ data, isPending });
    if (error) return <p role="alert">{error.message}</p>;
    if (!isPending && data.length === 0) return <p>No live sessions.</p>;
    return (
        <ListContextProvider value={listContext}>
            <Datagrid bulkActionButtons={false} rowClick={false}>
                <FunctionField label="Session" render={s => s.id.slice(0, 8)} />
                <DateField source="created_at" label="Started" showTime />
                <DateField source="last_used_at" label="Last used" showTime />
                <DateField source="expires_at" label="Ends at the latest" showTime />
                <TextField source="user_agent" label="Client" />
                <TextField source="ip_address" label="Address" />
                {showCurrent ? <BooleanField source="current" label="This one" /> : null}
                <EndButton basePath={basePath} />
            </Datagrid>
        </ListContextProvider>
    );
}

export function UserSessions() {
    const user = useRecordContext();
    const notify = useNotify();
    const refresh = useRefresh();
    if (!user) return null;
    const basePath = `/users/${user.id}/sessions`;
    const endAll = async () => {
        try {
            await call(basePath, { method: 'DELETE' });
            notify('Every session of this user ended', { type: 'info' });
            refresh();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <Box sx={{ width: '100%' }}>
            <Typography variant="h6">Sessions</Typography>
            <SessionTable basePath={basePath} />
            <Button label="End all sessions" onClick={endAll} />
        </Box>
    );
}
