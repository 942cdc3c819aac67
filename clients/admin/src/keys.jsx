// API keys for scripts: yours (My account: list, create, revoke) and a user's (admin, on
// their page: list, revoke). A new key's secret is shown once, in a dialog, and kept
// nowhere else: not in the query cache, not after the dialog closes.
import { useRef, useState } from 'react';
import CheckIcon from '@mui/icons-material/Check';
import ContentCopyIcon from '@mui/icons-material/ContentCopy';
import {
    Alert,
    Box,
    Button as MuiButton,
    Dialog,
    DialogActions,
    DialogContent,
    DialogTitle,
    TextField as MuiTextField,
    Typography,
} from '@mui/material';
import {
    Button,
    Confirm,
    Datagrid,
    DateField,
    Form,
    FunctionField,
    ListContextProvider,
    NumberInput,
    ResourceContextProvider,
    SaveButton,
    SelectInput,
    TextField,
    TextInput,
    maxLength,
    maxValue,
    minValue,
    required,
    useGetList,
    useList,
    useNotify,
    useRecordContext,
    useRefresh,
} from 'react-admin';

import { call } from './api';

const MY_KEYS = '/users/me/tokens';
const NEWEST_FIRST = { field: 'created_at', order: 'DESC' };
const ALL = { page: 1, perPage: 100 };

// backend/models.py ApiKeyScope, and the server's limits (checked again there).
const SCOPES = [
    { id: 'read', name: 'read: GET and HEAD only' },
    { id: 'write', name: 'write: whatever you may do' },
];
const DEFAULT_DAYS = 30;
const MAX_DAYS = 366;

function RevokeButton({ basePath }) {
    const record = useRecordContext();
    const notify = useNotify();
    const refresh = useRefresh();
    const [open, setOpen] = useState(false);
    const [revoking, setRevoking] = useState(false);
    if (!record) return null;
    const revoke = async () => {
        setRevoking(true);
        try {
            await call(`${basePath}/${encodeURIComponent(record.id)}`, { method: 'DELETE' });
            notify('API key revoked', { type: 'info' });
            refresh();
        } catch (error) {
            notify(error.message, { type: 'error' });
        } finally {
            setRevoking(false);
            setOpen(false);
        }
    };
    return (
        <>
            <Button label="Revoke" color="error" onClick={() => setOpen(true)} />
            <Confirm
                isOpen={open}
                loading={revoking}
                title={`Revoke the API key "${record.name}"?`}
                content={`Every script using ${record.prefix}… gets 401 from now on. A revoked key cannot be restored.`}
                confirm="Revoke"
                onConfirm={revoke}
                onClose={() => setOpen(false)}
            />
        </>
    );
}

function expired(key) {
    return new Date(key.expires_at) <= new Date();
}

// Its own resource (users/me/tokens, users/5/tokens), as the session table is.
export function KeyTable({ basePath }) {
    return (
        <ResourceContextProvider value={basePath.slice(1)}>
            <Keys basePath={basePath} />
        </ResourceContextProvider>
    );
}

function Keys({ basePath }) {
    const { data = [], isPending, error } = useGetList(basePath.slice(1), {
        pagination: ALL,
        sort: NEWEST_FIRST,
    });
    const listContext = useList({ data, isPending });
    if (error) return <p role="alert">{error.message}</p>;
    if (!isPending && data.length === 0) return <p>No API keys.</p>;
    return (
        <ListContextProvider value={listContext}>
            <Datagrid bulkActionButtons={false} rowClick={false}>
                <TextField source="name" />
                <FunctionField label="Prefix" render={key => <code>{key.prefix}…</code>} />
                <TextField source="scope" />
                <DateField source="created_at" label="Created" showTime />
                <FunctionField
                    label="Expires"
                    render={key => (
                        <>
                            <DateField source="expires_at" showTime />
                            {expired(key) ? ' (expired)' : null}
                        </>
                    )}
                />
                <DateField source="last_used_at" label="Last used" showTime emptyText="never" />
                <RevokeButton basePath={basePath} />
            </Datagrid>
        </ListContextProvider>
    );
}

function SecretDialog({ created, onClose }) {
    const input = useRef(null);
    // Said in the dialog: a notification would sit behind it, hidden from the keyboard.
    const [copied, setCopied] = useState(null);
    const copy = async () => {
        try {
            await navigator.clipboard.writeText(created.secret);
            setCopied(true);
        } catch {
            // No clipboard (a page not on https or localhost, or permission refused):
            // the key is selected instead, for the keyboard's copy.
            input.current?.select();
            setCopied(false);
        }
    };
    // No onClose: neither Escape nor a click beside the dialog closes it, losing the secret.
    return (
        <Dialog open aria-labelledby="new-key-title" maxWidth="md" fullWidth>
            <DialogTitle id="new-key-title">API key "{created.name}" created</DialogTitle>
            <DialogContent>
                <Alert severity="warning" sx={{ mb: 2 }}>
                    Copy it now: you will not see it again. Only its first characters
                    ({created.prefix}…) are kept, to tell it apart.
                </Alert>
                <MuiTextField
                    label="API key"
                    value={created.secret}
                    inputRef={input}
                    fullWidth
                    onFocus={event => event.target.select()}
                    slotProps={{ htmlInput: { readOnly: true, style: { fontFamily: 'monospace' } } }}
                />
                {copied === false ? (
                    <Alert severity="error" sx={{ mt: 2 }}>
                        Could not copy: the key is selected, copy it with Ctrl+C.
                    </Alert>
                ) : null}
                <Typography variant="body2" sx={{ mt: 2 }}>
                    Send it as <code>Authorization: Bearer {created.prefix}…</code>; it acts as
                    you, {created.scope === 'read' ? 'for GET and HEAD only' : 'for whatever you may do'},
                    until {new Date(created.expires_at).toLocaleString()}.
                </Typography>
            </DialogContent>
            <DialogActions>
                <MuiButton startIcon={copied ? <CheckIcon /> : <ContentCopyIcon />} onClick={copy}>
                    {copied ? 'Copied' : 'Copy'}
                </MuiButton>
                <MuiButton variant="contained" onClick={onClose}>
                    Done
                </MuiButton>
            </DialogActions>
        </Dialog>
    );
}

function CreateKeyForm({ onCreated }) {
    const notify = useNotify();
    // A new form after each key, empty again.
    const [generation, setGeneration] = useState(0);
    const create = async ({ name, scope, expires_in_days }) => {
        try {
            const { json } = await call(MY_KEYS, {
                method: 'POST',
                body: JSON.stringify({ name, scope, expires_in_days }),
            });
            setGeneration(generation + 1);
            onCreated(json);
        } catch (error) {
            notify(error.message, { type: 'error' });
            // A 422 names its fields: returned, react-admin shows each under its input.
            return error.body?.errors;
        }
    };
    return (
        <Form key={generation} defaultValues={{ scope: 'read', expires_in_days: DEFAULT_DAYS }} onSubmit={create}>
            <Box sx={{ display: 'flex', gap: 2, alignItems: 'flex-start' }}>
                <TextInput source="name" label="Key name" validate={[required(), maxLength(100)]} sx={{ flex: 2 }} />
                <SelectInput source="scope" choices={SCOPES} validate={required()} sx={{ flex: 2 }} />
                <NumberInput
                    source="expires_in_days"
                    label="Days until it expires"
                    validate={[required(), minValue(1), maxValue(MAX_DAYS)]}
                    sx={{ flex: 1 }}
                />
            </Box>
            <SaveButton label="Create key" />
        </Form>
    );
}

/** My account's keys: create one (its secret shown once), list, revoke. */
export function MyApiKeys() {
    const refresh = useRefresh();
    const [created, setCreated] = useState(null);
    const onCreated = key => {
        setCreated(key);
        refresh();
    };
    return (
        <>
            <KeyTable basePath={MY_KEYS} />
            <Typography variant="subtitle1" sx={{ mt: 2 }}>
                New key
            </Typography>
            <CreateKeyForm onCreated={onCreated} />
            {created ? <SecretDialog created={created} onClose={() => setCreated(null)} /> : null}
        </>
    );
}

/** A user's keys, on their page (admin): revoking one is in the audit trail. */
export function UserApiKeys() {
    const user = useRecordContext();
    if (!user) return null;
    return (
        <Box sx={{ width: '100%' }}>
            <Typography variant="h6">API keys</Typography>
            <KeyTable basePath={`/users/${user.id}/tokens`} />
        </Box>
    );
}
