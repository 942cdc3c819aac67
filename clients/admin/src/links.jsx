// The pages a mailed link opens, and "Forgot password?": used without a session, so they
// live outside the dashboard's screens (which all require a login) and its hash routes.
// The API mails PUBLIC_URL/accept-invite#token=..., /reset-password#token=...,
// /verify-email#token=... and /confirm-email#token=...; with PUBLIC_URL at the dashboard (https://host/admin) those
// paths reach its index.html (backend/admin.py), and the page is chosen by the path here.
// The token stays in the fragment, which the browser never sends to a server.
import { useEffect, useState } from 'react';
import { Alert, Box, Card, CardContent, CssBaseline, Link, Typography } from '@mui/material';
import {
    AdminContext,
    Form,
    PasswordInput,
    SaveButton,
    TextInput,
    defaultI18nProvider,
    email,
    memoryStore,
    required,
} from 'react-admin';

import { accept, publicCall } from './api';

// Where the dashboard is served (/admin/, or the dev server's): its login and screens.
const BASE = import.meta.env.BASE_URL;
export const FORGOT_PASSWORD_PATH = `${BASE}forgot-password`;

const MISSING_TOKEN =
    'This page needs the whole link from the mail, including the part after "#token=": ' +
    'copy it again from the mail into the address bar.';

/** The token a mailed link carries in its fragment, or null. */
function linkToken() {
    return new URLSearchParams(window.location.hash.slice(1)).get('token');
}

/** The token, kept current when another link replaces the fragment in this tab. */
function useLinkToken() {
    const [token, setToken] = useState(linkToken);
    useEffect(() => {
        const update = () => setToken(linkToken());
        window.addEventListener('hashchange', update);
        return () => window.removeEventListener('hashchange', update);
    }, []);
    return token;
}

function same(value, values) {
    return value === values.new_password ? undefined : 'The two passwords differ';
}

function Page({ title, children }) {
    return (
        <Box sx={{ minHeight: '100vh', display: 'flex', alignItems: 'flex-start', justifyContent: 'center', bgcolor: 'grey.100' }}>
            <Card sx={{ mt: '8em', width: 420 }}>
                <CardContent>
                    <Typography variant="h5" component="h1" gutterBottom>
                        {title}
                    </Typography>
                    {children}
                </CardContent>
            </Card>
        </Box>
    );
}

function ToLogin({ children = 'Go to the login page' }) {
    return (
        <Typography variant="body2" sx={{ mt: 2 }}>
            <Link href={BASE}>{children}</Link>
        </Typography>
    );
}

/**
 * Choose a password with the link's token (invitation or reset). The answer is a login,
 * with the refresh token in the HttpOnly cookie as the dashboard's own login gets it:
 * `onDone` then opens the dashboard, already logged in.
 */
function NewPasswordForm(props) {
    const token = useLinkToken();
    if (!token) return <Alert severity="error">{MISSING_TOKEN}</Alert>;
    // A new link, a new form: nothing typed for or said about the previous one stays.
    return <PasswordForm key={token} token={token} {...props} />;
}

function PasswordForm({ token, path, submit, onDone, unusable }) {
    const [problem, setProblem] = useState(null);
    const save = async ({ new_password }) => {
        setProblem(null);
        try {
            const tokens = await publicCall(path, { token, new_password }, { cookie: true });
            accept(tokens);
            onDone(tokens.user);
        } catch (error) {
            // A refused password names its field: shown under it. The rest (a used or
            // expired link: 400) is about the link, not what was typed.
            const fields = error.body?.errors;
            if (fields?.new_password) return fields;
            setProblem(error.message);
        }
    };
    return (
        <Form onSubmit={save}>
            {problem ? (
                <Alert severity="error" sx={{ mb: 2 }}>
                    {problem} {unusable}
                </Alert>
            ) : null}
            <PasswordInput source="new_password" label="New password" validate={required()} fullWidth autoComplete="new-password" />
            <PasswordInput source="repeat_password" label="Repeat the password" validate={[required(), same]} fullWidth autoComplete="new-password" />
            <SaveButton label={submit} icon={<span />} fullWidth />
        </Form>
    );
}

function AcceptInvite({ onDone }) {
    return (
        <Page title="Accept your invitation">
            <Typography variant="body2" sx={{ mb: 2 }}>
                Choose the password of your new account.
            </Typography>
            <NewPasswordForm
                path="/auth/password/set"
                submit="Set my password"
                onDone={onDone}
                unusable="Ask whoever invited you to send a new invitation."
            />
        </Page>
    );
}

function ResetPassword({ onDone }) {
    return (
        <Page title="Choose a new password">
            <Typography variant="body2" sx={{ mb: 2 }}>
                Every device signed in to your account will be signed out.
            </Typography>
            <NewPasswordForm
                path="/auth/password/reset"
                submit="Change my password"
                onDone={onDone}
                unusable={
                    <Link href={FORGOT_PASSWORD_PATH}>Ask for a new link.</Link>
                }
            />
        </Page>
    );
}

// One request a token, however often the page mounts (StrictMode mounts twice in
// development): a second would find the link used and show that instead.
const verifications = new Map();

function sendOnce(path, token) {
    if (!verifications.has(token)) verifications.set(token, publicCall(path, { token }));
    return verifications.get(token);
}

// Confirmed as the page opens: following the link is the owner's whole part in it.
function VerifyEmail() {
    const token = useLinkToken();
    return (
        <Page title="Verify your email address">
            {token ? (
                <Verification key={token} token={token} path="/auth/verify" done={user => `Your address ${user.email} is verified.`} />
            ) : (
                <Alert severity="error">{MISSING_TOKEN}</Alert>
            )}
            <ToLogin />
        </Page>
    );
}

// The same for an email change: following the link to the new address makes it.
function ConfirmEmail() {
    const token = useLinkToken();
    return (
        <Page title="Confirm your new email address">
            {token ? (
                <Verification
                    key={token}
                    token={token}
                    path="/auth/email/confirm"
                    done={user =>
                        `Your account's address is now ${user.email}. Your other devices were signed out; log in with the new address.`
                    }
                />
            ) : (
                <Alert severity="error">{MISSING_TOKEN}</Alert>
            )}
            <ToLogin />
        </Page>
    );
}

function Verification({ token, path, done }) {
    const [result, setResult] = useState(null);
    useEffect(() => {
        sendOnce(path, token).then(
            user => setResult({ user }),
            error => setResult({ error: error.message })
        );
    }, [path, token]);
    if (result === null) return <Typography>Checking the link…</Typography>;
    if (result.error) return <Alert severity="error">{result.error}</Alert>;
    return <Alert severity="success">{done(result.user)}</Alert>;
}

function ForgotPassword() {
    const [sent, setSent] = useState(null);
    const [problem, setProblem] = useState(null);
    const ask = async ({ email: address }) => {
        setProblem(null);
        try {
            const { detail } = await publicCall('/auth/password/forgot', { email: address });
            setSent(detail);
        } catch (error) {
            if (error.body?.errors?.email) return error.body.errors;
            setProblem(error.message);
        }
    };
    return (
        <Page title="Forgot your password?">
            {sent ? (
                <Alert severity="success">{sent} Check your mailbox.</Alert>
            ) : (
                <>
                    <Typography variant="body2" sx={{ mb: 2 }}>
                        Enter your account's email: we mail it a link to choose a new password.
                    </Typography>
                    {problem ? (
                        <Alert severity="error" sx={{ mb: 2 }}>
                            {problem}
                        </Alert>
                    ) : null}
                    <Form onSubmit={ask}>
                        <TextInput source="email" type="email" validate={[required(), email()]} fullWidth autoComplete="email" />
                        <SaveButton label="Mail me a link" icon={<span />} fullWidth />
                    </Form>
                </>
            )}
            <ToLogin>Back to the login page</ToLogin>
        </Page>
    );
}

const PAGES = {
    'accept-invite': AcceptInvite,
    'reset-password': ResetPassword,
    'verify-email': VerifyEmail,
    'confirm-email': ConfirmEmail,
    'forgot-password': ForgotPassword,
};

/** The link page this address is for, or null for the dashboard itself. */
export function linkPage() {
    const { pathname } = window.location;
    if (!pathname.startsWith(BASE)) return null;
    return PAGES[pathname.slice(BASE.length).replace(/\/+$/, '')] ?? null;
}

/**
 * A link page, with react-admin's theme and forms (no data, no session). `onLoggedIn`
 * takes over once a password is set: the dashboard, with the new session.
 */
export function LinkPage({ page: Component, onLoggedIn }) {
    return (
        <AdminContext i18nProvider={defaultI18nProvider} store={memoryStore()}>
            <CssBaseline />
            <Component onDone={onLoggedIn} />
        </AdminContext>
    );
}
