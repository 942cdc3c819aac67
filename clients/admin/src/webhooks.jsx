// Webhook endpoints (admin): the list, a new endpoint (its secret shown once, in a
// dialog, and kept nowhere else), an endpoint's page with its delivery log, and the
// button that enables again an endpoint disabled after failing.
import { useRef, useState } from 'react';
import {
    Alert,
    Button as MuiButton,
    Dialog,
    DialogActions,
    DialogContent,
    DialogTitle,
    TextField as MuiTextField,
    Typography,
} from '@mui/material';
import {
    BooleanField,
    Button,
    CheckboxGroupInput,
    Datagrid,
    DateField,
    DeleteButton,
    Form,
    FunctionField,
    List,
    ListContextProvider,
    ResourceContextProvider,
    SaveButton,
    Show,
    SimpleShowLayout,
    TextField,
    TextInput,
    TopToolbar,
    maxLength,
    required,
    useGetList,
    useList,
    useNotify,
    useRecordContext,
    useRefresh,
} from 'react-admin';
import { useNavigate } from 'react-router-dom';

import { call } from './api';

// backend/webhooks/models.py WebhookEventType
export const EVENTS = [
    { id: 'user.created', name: 'user.created' },
    { id: 'user.updated', name: 'user.updated' },
    { id: 'user.deleted', name: 'user.deleted' },
    { id: 'user.banned', name: 'user.banned' },
    { id: 'session.revoked', name: 'session.revoked' },
];

const events = endpoint => (endpoint.events || []).join(', ');

export function WebhookList() {
    return (
        <List sort={{ field: 'id', order: 'ASC' }} title="Webhooks">
            <Datagrid bulkActionButtons={false} rowClick="show">
                <TextField source="id" />
                <TextField source="url" label="URL" />
                <FunctionField label="Events" render={events} />
                <TextField source="description" />
                <BooleanField source="enabled" />
                <DateField source="failing_since" label="Failing since" showTime emptyText="-" />
            </Datagrid>
        </List>
    );
}

function SecretDialog({ created, onClose }) {
    const input = useRef(null);
    // No onClose: neither Escape nor a click beside the dialog closes it, losing the secret.
    return (
        <Dialog open aria-labelledby="new-webhook-title" maxWidth="md" fullWidth>
            <DialogTitle id="new-webhook-title">Webhook endpoint created</DialogTitle>
            <DialogContent>
                <Alert severity="warning" sx={{ mb: 2 }}>
                    Copy the signing secret now: you will not see it again. The receiver
                    verifies each delivery's <code>webhook-signature</code> with it.
                </Alert>
                <MuiTextField
                    label="Signing secret"
                    value={created.secret}
                    inputRef={input}
                    fullWidth
                    onFocus={event => event.target.select()}
                    slotProps={{ htmlInput: { readOnly: true, style: { fontFamily: 'monospace' } } }}
                />
            </DialogContent>
            <DialogActions>
                <MuiButton variant="contained" onClick={onClose}>
                    Done
                </MuiButton>
            </DialogActions>
        </Dialog>
    );
}

export function WebhookCreate() {
    const notify = useNotify();
    const navigate = useNavigate();
    const [created, setCreated] = useState(null);
    const create = async ({ url, events: chosen, description }) => {
        try {
            const { json } = await call('/webhooks', {
                method: 'POST',
                body: JSON.stringify({ url, events: chosen, description: description || '' }),
            });
            setCreated(json);
        } catch (error) {
            notify(error.message, { type: 'error' });
            // A 422 names its fields: returned, react-admin shows each under its input.
            return error.body?.errors;
        }
    };
    return (
        <>
            <Typography variant="h5" sx={{ mt: 2 }}>
                New webhook endpoint
            </Typography>
            <Form defaultValues={{ events: [] }} onSubmit={create}>
                <TextInput source="url" label="URL" validate={[required(), maxLength(2000)]} fullWidth />
                <CheckboxGroupInput source="events" choices={EVENTS} validate={required()} />
                <TextInput source="description" validate={maxLength(200)} fullWidth />
                <SaveButton label="Create endpoint" />
            </Form>
            {created ? (
                <SecretDialog created={created} onClose={() => navigate(`/webhooks/${created.id}/show`)} />
            ) : null}
        </>
    );
}

function EnableButton() {
    const record = useRecordContext();
    const notify = useNotify();
    const refresh = useRefresh();
    if (!record || record.enabled) return null;
    const enable = async () => {
        try {
            await call(`/webhooks/${record.id}`, { method: 'PATCH', body: JSON.stringify({ enabled: true }) });
            notify('Endpoint enabled: its waiting deliveries are sent again', { type: 'info' });
            refresh();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return <Button label="Enable again" onClick={enable} />;
}

function Deliveries() {
    const endpoint = useRecordContext();
    const path = `webhooks/${endpoint?.id}/deliveries`;
    const { data = [], isPending, error } = useGetList(
        path,
        { pagination: { page: 1, perPage: 100 }, sort: { field: 'created_at', order: 'DESC' } },
        { enabled: Boolean(endpoint) },
    );
    const listContext = useList({ data, isPending });
    if (!endpoint) return null;
    if (error) return <p role="alert">{error.message}</p>;
    if (!isPending && data.length === 0) return <p>No deliveries yet.</p>;
    return (
        <ResourceContextProvider value={path}>
            <ListContextProvider value={listContext}>
                <Datagrid bulkActionButtons={false} rowClick={false}>
                    <DateField source="created_at" label="Event at" showTime />
                    <TextField source="event_type" label="Event" />
                    <TextField source="event_id" label="webhook-id" />
                    <TextField source="status" />
                    <TextField source="attempts" />
                    <FunctionField
                        label="Last answer"
                        render={delivery => delivery.last_error || delivery.last_status_code || '-'}
                    />
                    <DateField source="next_attempt_at" label="Next attempt" showTime emptyText="-" />
                    <DateField source="delivered_at" label="Delivered" showTime emptyText="-" />
                </Datagrid>
            </ListContextProvider>
        </ResourceContextProvider>
    );
}

function ShowActions() {
    return (
        <TopToolbar>
            <EnableButton />
            <DeleteButton mutationMode="pessimistic" />
        </TopToolbar>
    );
}

export function WebhookShow() {
    return (
        <Show actions={<ShowActions />}>
            <SimpleShowLayout>
                <TextField source="url" label="URL" />
                <FunctionField label="Events" render={events} />
                <TextField source="description" />
                <BooleanField source="enabled" />
                <DateField source="failing_since" label="Failing since" showTime emptyText="-" />
                <DateField source="disabled_at" label="Disabled at" showTime emptyText="-" />
                <DateField source="created_at" label="Created" showTime />
            </SimpleShowLayout>
            <Typography variant="h6" sx={{ mx: 2 }}>
                Deliveries
            </Typography>
            <Deliveries />
        </Show>
    );
}
