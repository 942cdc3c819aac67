// Second factors: enrolling an authenticator app (QR code and key), the recovery codes
// shown once, turning it off; the page a restricted first sign-in is sent to; an
// admin's view and reset of a user's factors. See docs/mfa.md.
import { Alert, Box, Card, CardContent, CardHeader, Stack, Typography } from '@mui/material';
import { useCallback, useEffect, useState } from 'react';
import {
    Button,
    Form,
    PasswordInput,
    SaveButton,
    TextInput,
    Title,
    required,
    useNotify,
    useLogin,
    useRecordContext,
    useRefresh,
} from 'react-admin';
import { useNavigate } from 'react-router-dom';

import { call, mfa } from './api';

// Where a session that must enrol first is sent (authProvider.checkError).
export const SECURITY_PATH = '/security';

/** Call a route that asks for a recent proof; on 403 reauthentication_required, ask
 * for the password once (`askPassword`), send it, and call again. */
async function withRecentProof(path, options, askPassword) {
    try {
        return await call(path, options);
    } catch (error) {
        if (error.body?.code !== 'reauthentication_required') throw error;
        const password = await askPassword();
        await call('/auth/reauthenticate', { method: 'POST', body: JSON.stringify({ password }) });
        return call(path, options);
    }
}

function RecoveryCodes({ codes, onDone }) {
    return (
        <Stack spacing={1}>
            <Alert severity="warning">
                Store these recovery codes somewhere safe: each signs you in once if you lose your
                authenticator. They are shown only now.
            </Alert>
            <Box component="pre" data-testid="recovery-codes" sx={{ fontFamily: 'monospace' }}>
                {codes.join('\n')}
            </Box>
            <Box>
                <Button label="I have stored them" variant="contained" onClick={onDone} />
            </Box>
        </Stack>
    );
}

function PasswordPrompt({ onPassword }) {
    return (
        <Form onSubmit={({ password }) => onPassword(password)}>
            <Typography variant="body2">Confirm it is you: your password.</Typography>
            <PasswordInput source="password" label="Password" validate={required()} />
            <SaveButton label="Confirm" />
        </Form>
    );
}

/** My account → Security: the authenticator app and the recovery codes. */
export function SecurityCard({ onEnrolled }) {
    const notify = useNotify();
    const [status, setStatus] = useState(null);
    const [enrolment, setEnrolment] = useState(null);
    const [codes, setCodes] = useState(null);
    const [passwordWanted, setPasswordWanted] = useState(null);

    const load = useCallback(async () => {
        try {
            setStatus((await call('/users/me/mfa')).json);
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    }, [notify]);
    useEffect(() => {
        load();
    }, [load]);

    const askPassword = () => new Promise(resolve => setPasswordWanted(() => resolve));
    const proved = password => {
        passwordWanted(password);
        setPasswordWanted(null);
    };
    const guarded = async (path, method, then) => {
        try {
            then((await withRecentProof(path, { method }, askPassword)).json);
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    const start = () => guarded('/users/me/mfa/totp', 'POST', setEnrolment);
    const confirm = async ({ code }) => {
        try {
            const { json } = await call('/users/me/mfa/totp/confirm', {
                method: 'POST',
                body: JSON.stringify({ code }),
            });
            setEnrolment(null);
            setCodes(json.recovery_codes);
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    const turnOff = () =>
        guarded('/users/me/mfa/totp', 'DELETE', () => {
            notify('Authenticator app turned off', { type: 'info' });
            load();
        });
    const newCodes = () => guarded('/users/me/mfa/recovery-codes', 'POST', json => setCodes(json.recovery_codes));
    const codesStored = () => {
        setCodes(null);
        load();
        onEnrolled?.();
    };

    if (passwordWanted) return <PasswordPrompt onPassword={proved} />;
    if (codes) return <RecoveryCodes codes={codes} onDone={codesStored} />;
    if (enrolment) {
        return (
            <Stack spacing={1}>
                <Typography variant="body2">
                    Scan this QR code with your authenticator app, or type the key in it.
                </Typography>
                <Box
                    aria-label="QR code"
                    sx={{ width: 200 }}
                    component="img"
                    src={`data:image/svg+xml;utf8,${encodeURIComponent(enrolment.qr_svg)}`}
                />
                <Typography variant="body2">
                    Key: <code data-testid="totp-secret">{enrolment.secret}</code>
                </Typography>
                <Form onSubmit={confirm}>
                    <TextInput source="code" label="Code from the app" validate={required()} autoComplete="one-time-code" />
                    <SaveButton label="Turn on" />
                </Form>
            </Stack>
        );
    }
    if (!status) return null;
    if (!status.totp) {
        return (
            <Stack spacing={1} alignItems="flex-start">
                <Typography variant="body2">No authenticator app: your password alone signs you in.</Typography>
                <Button label="Set up an authenticator app" variant="contained" onClick={start} />
            </Stack>
        );
    }
    return (
        <Stack spacing={1} alignItems="flex-start">
            <Typography variant="body2">
                Authenticator app on; {status.recovery_codes_left} recovery codes left.
            </Typography>
            <Stack direction="row" spacing={1}>
                <Button label="New recovery codes" onClick={newCodes} />
                <Button label="Turn off" onClick={turnOff} />
            </Stack>
        </Stack>
    );
}

/** The page a restricted session is sent to: nothing else works until it enrols. */
export function SecurityPage() {
    const navigate = useNavigate();
    return (
        <Card sx={{ mt: 2 }}>
            <Title title="Security" />
            <CardHeader title="Set up a second factor" />
            <CardContent>
                <Alert severity="info" sx={{ mb: 2 }}>
                    This server requires a second factor for your account: set up an authenticator app to
                    continue.
                </Alert>
                <SecurityCard onEnrolled={() => navigate('/')} />
            </CardContent>
        </Card>
    );
}

/** The login page's second step, once the password passed (api.mfa.pending). */
export function MfaCodeForm() {
    const login = useLogin();
    const notify = useNotify();
    const methods = mfa.pending?.methods ?? [];
    const fail = error => notify(error.message, { type: 'error' });
    const submit = ({ code }) => login({ code }).catch(fail);
    const withPasskey = methods.includes('passkey') ? (
        <Button label="Use a passkey" variant="outlined" onClick={() => login({ passkeyFactor: true }).catch(fail)} sx={{ mt: 1 }} fullWidth />
    ) : null;
    if (!methods.includes('totp')) {
        return (
            <CardContent>
                {withPasskey}
                <Button label="Back" onClick={() => mfa.cancel()} sx={{ mt: 1 }} />
            </CardContent>
        );
    }
    return (
        <Form onSubmit={submit}>
            <CardContent>
                <TextInput
                    source="code"
                    label="Code from your authenticator app"
                    helperText="Or one of your recovery codes"
                    validate={required()}
                    autoComplete="one-time-code"
                    autoFocus
                    fullWidth
                />
                <SaveButton label="Verify" fullWidth />
                {withPasskey}
                <Button label="Back" onClick={() => mfa.cancel()} sx={{ mt: 1 }} />
            </CardContent>
        </Form>
    );
}

/** An admin's view of a user's factors, with the reset for a lost phone. */
export function UserMfa() {
    const user = useRecordContext();
    const notify = useNotify();
    const refresh = useRefresh();
    const [status, setStatus] = useState(null);
    useEffect(() => {
        if (!user) return;
        call(`/users/${user.id}/mfa`).then(
            ({ json }) => setStatus(json),
            error => notify(error.message, { type: 'error' }),
        );
    }, [user, notify]);
    if (!user || !status) return null;
    const reset = async () => {
        try {
            await call(`/users/${user.id}/mfa`, { method: 'DELETE' });
            notify("Second factors removed; the user's sessions ended", { type: 'info' });
            setStatus({ totp: false, recovery_codes_left: 0, methods: [] });
            refresh();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <Box sx={{ width: '100%' }}>
            <Typography variant="h6">Second factors</Typography>
            <Typography variant="body2" data-testid="user-mfa">
                {status.totp
                    ? `Authenticator app on; ${status.recovery_codes_left} recovery codes left.`
                    : 'None.'}
            </Typography>
            {status.totp ? <Button label="Reset second factors" onClick={reset} /> : null}
        </Box>
    );
}
