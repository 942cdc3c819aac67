// My account's own-data cards: change your email and delete your account, which ask for
// a recent proof of who you are, and export your data. A 403 reauthentication_required
// opens a password prompt; once POST /auth/reauthenticate accepts the password, the
// change is sent again.
import { useState } from 'react';
import { Alert, Button, Dialog, DialogActions, DialogContent, DialogTitle, Stack, TextField, Typography } from '@mui/material';
import { Confirm, Form, SaveButton, TextInput, email, required, useLogout, useNotify } from 'react-admin';

import { call } from './api';

/**
 * `run(action)` calls `action`, and when the server asks for a recent proof, asks for
 * the password, proves it, and calls `action` once more. `prompt` is the dialog to render.
 */
function useRecentProof() {
    const [pending, setPending] = useState(null);
    const [password, setPassword] = useState('');
    const [problem, setProblem] = useState(null);

    const run = async action => {
        try {
            return await action();
        } catch (error) {
            if (error.body?.code !== 'reauthentication_required') throw error;
            return new Promise((resolve, reject) => setPending({ action, resolve, reject }));
        }
    };
    const close = () => {
        setPending(null);
        setPassword('');
        setProblem(null);
    };
    const prove = async event => {
        event.preventDefault();
        setProblem(null);
        try {
            await call('/auth/reauthenticate', { method: 'POST', body: JSON.stringify({ password }) });
        } catch (error) {
            setProblem(error.message);
            return;
        }
        const { action, resolve, reject } = pending;
        close();
        action().then(resolve, reject);
    };
    const cancel = () => {
        pending?.reject(new Error('Cancelled: nothing was changed.'));
        close();
    };
    const prompt = (
        <Dialog open={pending !== null} onClose={cancel}>
            <form onSubmit={prove}>
                <DialogTitle>Confirm it is you</DialogTitle>
                <DialogContent>
                    <Typography variant="body2" sx={{ mb: 2 }}>
                        This change needs your password again.
                    </Typography>
                    {problem ? <Alert severity="error" sx={{ mb: 2 }}>{problem}</Alert> : null}
                    <TextField
                        label="Password"
                        type="password"
                        name="reauth_password"
                        value={password}
                        onChange={event => setPassword(event.target.value)}
                        autoComplete="current-password"
                        autoFocus
                        fullWidth
                    />
                </DialogContent>
                <DialogActions>
                    <Button onClick={cancel}>Cancel</Button>
                    <Button type="submit" variant="contained" disabled={!password}>
                        Confirm
                    </Button>
                </DialogActions>
            </form>
        </Dialog>
    );
    return { run, prompt };
}

export function ChangeEmail() {
    const notify = useNotify();
    const { run, prompt } = useRecentProof();
    const save = async ({ email: address }) => {
        try {
            const { json } = await run(() =>
                call('/users/me/email', { method: 'POST', body: JSON.stringify({ email: address }) })
            );
            notify(json.detail, { type: 'info' });
        } catch (error) {
            if (error.body?.errors?.email) return error.body.errors;
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <>
            <Typography variant="body2" sx={{ mb: 1 }}>
                We mail a link to the new address; your address changes once it is followed.
                Your current address is told about it.
            </Typography>
            <Form onSubmit={save}>
                <TextInput source="email" label="New email" type="email" validate={[required(), email()]} />
                <SaveButton label="Change email" />
            </Form>
            {prompt}
        </>
    );
}

export function DeleteAccount() {
    const notify = useNotify();
    const logout = useLogout();
    const { run, prompt } = useRecentProof();
    const [asking, setAsking] = useState(false);
    const remove = async () => {
        setAsking(false);
        try {
            const { json } = await run(() => call('/users/me', { method: 'DELETE' }));
            notify(json.detail, { type: 'info' });
            logout();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <>
            <Stack direction="row" spacing={2} sx={{ alignItems: 'center' }}>
                <Typography variant="body2">
                    Your sessions, API keys and pending links go with it.
                </Typography>
                <Button color="error" variant="outlined" onClick={() => setAsking(true)}>
                    Delete account
                </Button>
            </Stack>
            <Confirm
                isOpen={asking}
                title="Delete your account?"
                content="You will be signed out everywhere. This cannot be undone, unless the server keeps deleted accounts for a grace period and you log in again before it ends."
                confirm="Delete my account"
                onConfirm={remove}
                onClose={() => setAsking(false)}
            />
            {prompt}
        </>
    );
}

/** The export as a file download, named as the server names it. */
export function ExportData() {
    const notify = useNotify();
    const download = async () => {
        try {
            const { body, headers } = await call('/users/me/export');
            const disposition = headers.get('Content-Disposition') ?? '';
            const name = /filename="([^"]+)"/.exec(disposition)?.[1] ?? 'account-export.json';
            const url = URL.createObjectURL(new Blob([body], { type: 'application/json' }));
            const link = document.createElement('a');
            link.href = url;
            link.download = name;
            link.click();
            URL.revokeObjectURL(url);
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <Stack direction="row" spacing={2} sx={{ alignItems: 'center' }}>
            <Typography variant="body2">
                Your profile, sessions, API keys (never their secrets) and the audit events about you, as JSON.
            </Typography>
            <Button variant="outlined" onClick={download}>
                Export my data
            </Button>
        </Stack>
    );
}
