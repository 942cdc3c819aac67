// react-admin's authProvider for this API: cookie-transport login, a silent refresh on
// load and before expiry (src/api.js), logout, identity from /users/me, the role as the
// permissions.
import * as api from './api';
import { signInWithPasskey } from './passkeys';

export const authProvider = {
    async login({ username, password, passkey }) {
        if (passkey) return signInWithPasskey();
        await api.login(username, password);
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
    async checkError(error) {
        if (error?.status === 401) {
            api.forget();
            throw error;
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
