// react-admin's authProvider for this API: cookie-transport login, a silent refresh on
// load and before expiry (src/api.js), logout, identity from /users/me, the role as the
// permissions.
import * as api from './api';
import { SECURITY_PATH } from './mfa';
import { signInWithPasskey, verifyMfaWithPasskey } from './passkeys';

export const authProvider = {
    // The login page sends `code` alone for the second step (api.mfa.pending), or
    // `passkey` for a passwordless sign-in.
    async login({ username, password, passkey, passkeyFactor, code }) {
        if (passkey) return signInWithPasskey();
        if (passkeyFactor) return verifyMfaWithPasskey();
        if (code !== undefined) await api.verifyMfa({ code });
        else await api.login(username, password);
    },

    async logout() {
        await api.logout();
    },

    // A reload forgets the access token; the refresh cookie brings the session back.
    async checkAuth() {
        if (!api.session.authenticated) await api.refresh();
    },

    // httpClient has already tried a refresh: a 401 here means the session is over.
    // A 403 is a refusal to show, not a reason to log out.
    // A session that must enrol a second factor first (MFA_REQUIRED) goes to do so.
    async checkError(error) {
        if (error?.status === 401) {
            api.forget();
            throw error;
        }
        if (error?.status === 403 && error.body?.code === 'mfa_enrolment_required') {
            throw { redirectTo: SECURITY_PATH, logoutUser: false, message: false };
        }
    },

    async getIdentity() {
        const { json: me } = await api.call('/users/me');
        return { id: me.id, fullName: me.name, email: me.email, role: me.role };
    },

    async getPermissions() {
        if (!api.session.authenticated) {
            try {
                await api.refresh();
            } catch {
                return null;
            }
        }
        return api.session.user?.role ?? null;
    },
};
