// Support tools on a user's page: ban (reason, optional end) and lift a ban; impersonate
// (asking for the admin's password when the server wants a recent proof), with a banner
// while it lasts whose Stop goes back to the admin's own session (see api.js).
import { useEffect, useState } from 'react';
import { Alert, Box, Dialog, DialogActions, DialogContent, DialogTitle, TextField, Typography } from '@mui/material';
import { useQueryClient } from '@tanstack/react-query';
import { Button, useNotify, useRecordContext, useRefresh } from 'react-admin';
import { useNavigate } from 'react-router-dom';

import * as api from './api';

/** Whether a ban is in force now: it ends by itself at banned_until. */
export function banInForce(user) {
    if (!user?.banned_at) return false;
    return !user.banned_until || new Date(user.banned_until) > new Date();
}

function fieldErrors(error) {
    return error?.body?.errors ?? {};
}

function BanDialog({ user, onClose }) {
    const notify = useNotify();
    const refresh = useRefresh();
    const [reason, setReason] = useState('');
    const [until, setUntil] = useState('');
    const [errors, setErrors] = useState({});
    const submit = async () => {
        // datetime-local is the admin's local time; the API takes an instant with its offset.
        const body = { reason, until: until ? new Date(until).toISOString() : null };
        try {
            await api.call(`/users/${user.id}/ban`, { method: 'POST', body: JSON.stringify(body) });
            notify('User banned: their sessions and API keys have ended', { type: 'info' });
            onClose();
            refresh();
        } catch (error) {
            setErrors(fieldErrors(error));
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <Dialog open onClose={onClose} aria-labelledby="ban-title">
            <DialogTitle id="ban-title">Ban {user.email}</DialogTitle>
            <DialogContent>
                <Typography variant="body2" sx={{ mb: 2 }}>
                    Their sessions and API keys end now. Without an end date the ban lasts until lifted.
                </Typography>
                <TextField
                    label="Reason"
                    value={reason}
                    onChange={event => setReason(event.target.value)}
                    error={Boolean(errors.reason)}
                    helperText={errors.reason ?? 'Seen by admins, not by the user'}
                    fullWidth
                    margin="dense"
                />
                <TextField
                    label="Until (optional)"
                    type="datetime-local"
                    value={until}
                    onChange={event => setUntil(event.target.value)}
                    error={Boolean(errors.until)}
                    helperText={errors.until ?? 'Your local time'}
                    fullWidth
                    margin="dense"
                    slotProps={{ inputLabel: { shrink: true } }}
                />
            </DialogContent>
            <DialogActions>
                <Button label="Cancel" onClick={onClose} />
                <Button label="Ban user" onClick={submit} />
            </DialogActions>
        </Dialog>
    );
}

export function BanControls() {
    const user = useRecordContext();
    const notify = useNotify();
    const refresh = useRefresh();
    const [open, setOpen] = useState(false);
    if (!user) return null;
    const lift = async () => {
        try {
            await api.call(`/users/${user.id}/ban`, { method: 'DELETE' });
            notify('Ban lifted', { type: 'info' });
            refresh();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    const inForce = banInForce(user);
    return (
        <Box>
            <Typography variant="subtitle2">Ban</Typography>
            {user.banned_at ? (
                <Typography variant="body2" role="status">
                    {inForce ? 'Banned' : 'Ban ended'}{' '}
                    {user.banned_until ? `until ${new Date(user.banned_until).toLocaleString()}` : 'with no end date'}
                    {user.ban_reason ? ` — ${user.ban_reason}` : ''}
                </Typography>
            ) : (
                <Typography variant="body2">Not banned</Typography>
            )}
            {user.banned_at ? <Button label="Lift ban" onClick={lift} /> : null}
            {!inForce ? <Button label="Ban" onClick={() => setOpen(true)} /> : null}
            {open ? <BanDialog user={user} onClose={() => setOpen(false)} /> : null}
        </Box>
    );
}

function PasswordPrompt({ onConfirm, onClose }) {
    const [password, setPassword] = useState('');
    const [problem, setProblem] = useState(null);
    const confirm = async () => {
        try {
            await api.call('/auth/reauthenticate', { method: 'POST', body: JSON.stringify({ password }) });
            await onConfirm();
        } catch (error) {
            setProblem(error.message);
        }
    };
    return (
        <Dialog open onClose={onClose} aria-labelledby="reauth-title">
            <DialogTitle id="reauth-title">Confirm it is you</DialogTitle>
            <DialogContent>
                <Typography variant="body2" sx={{ mb: 2 }}>
                    Impersonating a user needs a recent sign-in: enter your password.
                </Typography>
                <TextField
                    label="Your password"
                    type="password"
                    value={password}
                    onChange={event => setPassword(event.target.value)}
                    error={Boolean(problem)}
                    helperText={problem}
                    fullWidth
                    autoFocus
                />
            </DialogContent>
            <DialogActions>
                <Button label="Cancel" onClick={onClose} />
                <Button label="Confirm" onClick={confirm} />
            </DialogActions>
        </Dialog>
    );
}

export function ImpersonateButton() {
    const user = useRecordContext();
    const notify = useNotify();
    const navigate = useNavigate();
    const queryClient = useQueryClient();
    const [asking, setAsking] = useState(false);
    if (!user || user.role === 'admin' || !user.is_active || banInForce(user)) return null;
    const start = async () => {
        const { json } = await api.call(`/users/${user.id}/impersonate`, { method: 'POST' });
        api.startImpersonation(json);
        queryClient.clear(); // every screen, permissions included, is the user's now
        navigate(`/users/${user.id}/show`); // their own page, as they see it
    };
    const impersonate = async () => {
        try {
            await start();
        } catch (error) {
            if (error.body?.code === 'reauthentication_required') setAsking(true);
            else notify(error.message, { type: 'error' });
        }
    };
    const confirmed = async () => {
        setAsking(false);
        try {
            await start();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <>
            <Button label="Impersonate" onClick={impersonate} />
            {asking ? <PasswordPrompt onConfirm={confirmed} onClose={() => setAsking(false)} /> : null}
        </>
    );
}

/** "Viewing as X — Stop", above every screen while an impersonation lasts. */
export function ImpersonationBanner() {
    const [viewed, setViewed] = useState(api.session.impersonating);
    const navigate = useNavigate();
    const queryClient = useQueryClient();
    useEffect(() => api.onImpersonationChange(setViewed), []);
    if (!viewed) return null;
    const stop = async () => {
        await api.stopImpersonation();
        queryClient.clear();
        navigate(`/users/${viewed.id}/show`);
    };
    return (
        <Alert
            severity="warning"
            role="banner"
            action={<Button label="Stop" onClick={stop} />}
            sx={{ mb: 1 }}
        >
            Viewing as {viewed.email}: every request is audited. Stop to return to your own session.
        </Alert>
    );
}
