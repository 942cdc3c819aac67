// Passkeys: yours in My account (add, rename, remove) and the login page's "Sign in with
// a passkey" when the server offers it (PASSKEY_LOGIN). The browser's side of each
// ceremony is @simplewebauthn/browser's: it turns the server's JSON options into what
// navigator.credentials takes and the answer back into the JSON the server reads.
import { useCallback, useEffect, useState } from 'react';
import { startAuthentication, startRegistration } from '@simplewebauthn/browser';
import {
    Box,
    Button,
    Dialog,
    DialogActions,
    DialogContent,
    DialogTitle,
    Stack,
    Table,
    TableBody,
    TableCell,
    TableHead,
    TableRow,
    TextField,
    Typography,
} from '@mui/material';
import { useLogin, useNotify } from 'react-admin';

import { API_URL, accept, call, mfa, publicCall, verifyMfa } from './api';

const MINE = '/users/me/passkeys';

/** A passwordless sign-in: the server's challenge, the browser's passkey, a session. */
export async function signInWithPasskey() {
    const options = await publicCall('/auth/passkey/options', {});
    const credential = await startAuthentication({ optionsJSON: options });
    accept(await publicCall('/auth/passkey/verify', { credential }, { cookie: true }));
}

/** A login's second step with a passkey, when mfa_required listed `passkey`. */
export async function verifyMfaWithPasskey() {
    const options = await publicCall('/auth/mfa/passkey-options', { mfa_token: mfa.pending?.token });
    const credential = await startAuthentication({ optionsJSON: options });
    await verifyMfa({ credential });
}

export function PasskeySignIn() {
    const [offered, setOffered] = useState(false);
    const login = useLogin();
    const notify = useNotify();
    useEffect(() => {
        fetch(`${API_URL}/auth/passkey`)
            .then(response => (response.ok ? response.json() : { enabled: false }))
            .then(status => setOffered(status.enabled))
            .catch(() => setOffered(false));
    }, []);
    if (!offered) return null;
    const signIn = () => login({ passkey: true }).catch(error => notify(error.message, { type: 'error' }));
    return (
        <Box sx={{ px: 2, pb: 1, textAlign: 'center' }}>
            <Button variant="outlined" fullWidth onClick={signIn}>
                Sign in with a passkey
            </Button>
        </Box>
    );
}

// Asks for the password when the server wants a recent proof (403
// reauthentication_required), then lets the caller retry.
function PasswordDialog({ open, onProved, onClose }) {
    const [password, setPassword] = useState('');
    const notify = useNotify();
    const prove = async () => {
        try {
            await call('/auth/reauthenticate', { method: 'POST', body: JSON.stringify({ password }) });
            setPassword('');
            onProved();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <Dialog open={open} onClose={onClose}>
            <DialogTitle>Confirm it is you</DialogTitle>
            <DialogContent>
                <TextField
                    type="password"
                    label="Your password"
                    value={password}
                    onChange={event => setPassword(event.target.value)}
                    autoFocus
                    fullWidth
                    margin="dense"
                />
            </DialogContent>
            <DialogActions>
                <Button onClick={onClose}>Cancel</Button>
                <Button onClick={prove} variant="contained">
                    Confirm
                </Button>
            </DialogActions>
        </Dialog>
    );
}

function RenameDialog({ passkey, onDone, onClose }) {
    const [name, setName] = useState(passkey?.name ?? '');
    const notify = useNotify();
    useEffect(() => setName(passkey?.name ?? ''), [passkey]);
    const save = async () => {
        try {
            await call(`${MINE}/${passkey.id}`, { method: 'PATCH', body: JSON.stringify({ name }) });
            notify('Passkey renamed', { type: 'info' });
            onDone();
        } catch (error) {
            notify(error.body?.errors?.name ?? error.message, { type: 'error' });
        }
    };
    return (
        <Dialog open={passkey !== null} onClose={onClose}>
            <DialogTitle>Rename the passkey</DialogTitle>
            <DialogContent>
                <TextField
                    label="New name"
                    value={name}
                    onChange={event => setName(event.target.value)}
                    autoFocus
                    fullWidth
                    margin="dense"
                />
            </DialogContent>
            <DialogActions>
                <Button onClick={onClose}>Cancel</Button>
                <Button onClick={save} variant="contained">
                    Save
                </Button>
            </DialogActions>
        </Dialog>
    );
}

function RemoveDialog({ passkey, onDone, onClose }) {
    const [proving, setProving] = useState(false);
    const notify = useNotify();
    const remove = async () => {
        try {
            await call(`${MINE}/${passkey.id}`, { method: 'DELETE' });
            notify('Passkey removed', { type: 'info' });
            onDone();
        } catch (error) {
            if (error.body?.code === 'reauthentication_required') setProving(true);
            else notify(error.message, { type: 'error' });
        }
    };
    return (
        <>
            <Dialog open={passkey !== null && !proving} onClose={onClose}>
                <DialogTitle>Remove the passkey "{passkey?.name}"?</DialogTitle>
                <DialogContent>It will sign no one in any more.</DialogContent>
                <DialogActions>
                    <Button onClick={onClose}>Cancel</Button>
                    <Button onClick={remove} color="error" variant="contained">
                        Remove
                    </Button>
                </DialogActions>
            </Dialog>
            <PasswordDialog
                open={proving}
                onProved={() => {
                    setProving(false);
                    remove();
                }}
                onClose={() => {
                    setProving(false);
                    onClose();
                }}
            />
        </>
    );
}

function when(value) {
    return value ? new Date(value).toLocaleString() : 'never';
}

export function MyPasskeys() {
    const [passkeys, setPasskeys] = useState(null);
    const [name, setName] = useState('');
    const [renaming, setRenaming] = useState(null);
    const [removing, setRemoving] = useState(null);
    const notify = useNotify();
    const load = useCallback(() => {
        call(MINE)
            .then(({ json }) => setPasskeys(json))
            .catch(error => notify(error.message, { type: 'error' }));
    }, [notify]);
    useEffect(load, [load]);

    const add = async () => {
        try {
            const { json: options } = await call(`${MINE}/options`, { method: 'POST' });
            const credential = await startRegistration({ optionsJSON: options });
            await call(MINE, { method: 'POST', body: JSON.stringify({ credential, name: name.trim() || null }) });
            setName('');
            notify('Passkey added', { type: 'info' });
            load();
        } catch (error) {
            notify(error.body?.errors?.name ?? error.message, { type: 'error' });
        }
    };
    const done = () => {
        setRenaming(null);
        setRemoving(null);
        load();
    };

    return (
        <Stack spacing={2}>
            {passkeys?.length === 0 ? <Typography>No passkeys.</Typography> : null}
            {passkeys?.length ? (
                <Table size="small" aria-label="Passkeys">
                    <TableHead>
                        <TableRow>
                            <TableCell>Name</TableCell>
                            <TableCell>Added</TableCell>
                            <TableCell>Last used</TableCell>
                            <TableCell>Kind</TableCell>
                            <TableCell />
                        </TableRow>
                    </TableHead>
                    <TableBody>
                        {passkeys.map(passkey => (
                            <TableRow key={passkey.id}>
                                <TableCell>{passkey.name}</TableCell>
                                <TableCell>{when(passkey.created_at)}</TableCell>
                                <TableCell>{when(passkey.last_used_at)}</TableCell>
                                <TableCell>{passkey.backed_up ? 'synced' : 'this device only'}</TableCell>
                                <TableCell align="right">
                                    <Button size="small" onClick={() => setRenaming(passkey)}>
                                        Rename
                                    </Button>
                                    <Button size="small" color="error" onClick={() => setRemoving(passkey)}>
                                        Remove
                                    </Button>
                                </TableCell>
                            </TableRow>
                        ))}
                    </TableBody>
                </Table>
            ) : null}
            <Stack direction="row" spacing={1} alignItems="center">
                <TextField
                    size="small"
                    label="Passkey name"
                    placeholder="Passkey"
                    value={name}
                    onChange={event => setName(event.target.value)}
                />
                <Button variant="contained" onClick={add}>
                    Add a passkey
                </Button>
            </Stack>
            <RenameDialog passkey={renaming} onDone={done} onClose={() => setRenaming(null)} />
            {removing ? <RemoveDialog passkey={removing} onDone={done} onClose={() => setRemoving(null)} /> : null}
        </Stack>
    );
}
