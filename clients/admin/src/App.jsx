import { QueryClient } from '@tanstack/react-query';
import PersonIcon from '@mui/icons-material/Person';
import { Link, Typography } from '@mui/material';
import { useSyncExternalStore } from 'react';
import { Admin, CustomRoutes, Layout, Login, LoginForm, Menu, Resource } from 'react-admin';
import { Route } from 'react-router-dom';

import { MyAccount } from './account';
import { mfa } from './api';
import { AuditList } from './audit';
import { authProvider } from './authProvider';
import { dataProvider } from './dataProvider';
import { INVITE_PATH, InviteUser } from './invite';
import { FORGOT_PASSWORD_PATH } from './links';
import { PasskeySignIn } from './passkeys';
import { SsoButtons } from './sso';
import { ImpersonationBanner } from './support';
import { MfaCodeForm, SECURITY_PATH, SecurityPage } from './mfa';
import { SignInList } from './signins';
import { UserCreate, UserEdit, UserList, UserShow } from './users';
import { WebhookCreate, WebhookList, WebhookShow } from './webhooks';

// No refetch on focus: it would swap the version an open edit form saves against (its
// If-Match) for the newest, silently overwriting a concurrent edit. No retries: a 429 or
// a 503 shows at once, with its Retry-After, rather than after three more tries.
const queryClient = new QueryClient({
    defaultOptions: { queries: { refetchOnWindowFocus: false, retry: false } },
});

function AppMenu() {
    return (
        <Menu>
            <Menu.ResourceItems />
            <Menu.Item to="/my-account" primaryText="My account" leftIcon={<PersonIcon />} />
        </Menu>
    );
}

// A page of its own (src/links.jsx), outside the screens that need a login.
function LoginPage() {
    // After the password, for an account with a second factor: its code.
    const pending = useSyncExternalStore(mfa.subscribe, () => mfa.pending);
    if (pending) {
        return (
            <Login>
                <MfaCodeForm />
            </Login>
        );
    }
    return (
        <Login>
            <LoginForm />
            <PasskeySignIn />
            <SsoButtons />
            <Typography variant="body2" align="center" sx={{ pb: 2 }}>
                <Link href={FORGOT_PASSWORD_PATH}>Forgot password?</Link>
            </Typography>
        </Login>
    );
}

// The impersonation banner (src/support.jsx) above every screen while one lasts.
function AppLayout({ children, ...props }) {
    return (
        <Layout {...props} menu={AppMenu}>
            <ImpersonationBanner />
            {children}
        </Layout>
    );
}

// Screens by role: the API refuses plain users every write and the audit trail, so
// they are not offered. API keys are no resource of their own: yours are in My account,
// a user's on their page. Invitations are users (inactive until accepted): invited from
// the users list, re-sent from the user's page.
function resources(permissions) {
    const admin = permissions === 'admin';
    return [
        <Resource
            key="users"
            name="users"
            list={UserList}
            show={UserShow}
            edit={admin ? UserEdit : undefined}
            create={admin ? UserCreate : undefined}
            recordRepresentation="email"
        />,
        admin ? <Resource key="audit" name="audit" list={AuditList} options={{ label: 'Audit trail' }} /> : null,
        admin ? (
            <Resource key="webhooks" name="webhooks" list={WebhookList} show={WebhookShow} create={WebhookCreate} />
        ) : null,
        admin ? (
            <Resource key="auth-events" name="auth-events" list={SignInList} options={{ label: 'Sign-in history' }} />
        ) : null,
        <CustomRoutes key="account">
            <Route path="/my-account" element={<MyAccount />} />
            <Route path={SECURITY_PATH} element={<SecurityPage />} />
            {admin ? <Route path={INVITE_PATH} element={<InviteUser />} /> : null}
        </CustomRoutes>,
    ];
}

export function App() {
    return (
        <Admin
            title="Users admin"
            dataProvider={dataProvider}
            authProvider={authProvider}
            queryClient={queryClient}
            layout={AppLayout}
            loginPage={LoginPage}
            requireAuth
            disableTelemetry
        >
            {resources}
        </Admin>
    );
}
