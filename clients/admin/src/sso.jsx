// Sign-in with identity providers: a button per provider on the login page, the
// one-time code the provider's trip ends in traded for a cookie session, and My
// account's linked providers, with link and unlink.
import { Button, Card, CardContent, CardHeader, Stack } from '@mui/material';
import { useEffect, useState } from 'react';
import { useNotify } from 'react-admin';

import { API_URL, accept, call, publicCall } from './api';

// Where the trip comes back: the dashboard's own address (a path of the API's origin).
const HOME = import.meta.env.BASE_URL;

async function providers() {
    const response = await fetch(`${API_URL}/auth/sso/providers`);
    return response.ok ? response.json() : [];
}

/** The login page's buttons: each goes to the provider, and back to the dashboard. */
export function SsoButtons() {
    const [list, setList] = useState([]);
    useEffect(() => {
        providers().then(setList, () => setList([]));
    }, []);
    if (list.length === 0) return null;
    return (
        <Stack spacing={1} sx={{ px: 2, pb: 2 }}>
            {list.map((provider) => (
                <Button
                    key={provider.slug}
                    variant="outlined"
                    href={`${provider.authorize_url}?return_to=${encodeURIComponent(HOME)}`}
                >
                    Sign in with {provider.name}
                </Button>
            ))}
        </Stack>
    );
}

/**
 * Back from a provider with `?sso_code=`: trade it for a cookie session (once), and take
 * it out of the address bar. Resolves whether or not there was one; a refused code leaves
 * the login page to show.
 */
export async function finishSsoSignIn() {
    const params = new URLSearchParams(window.location.search);
    const code = params.get('sso_code');
    if (!code) return;
    params.delete('sso_code');
    const rest = params.toString();
    window.history.replaceState(null, '', `${window.location.pathname}${rest ? `?${rest}` : ''}${window.location.hash}`);
    try {
        accept(await publicCall('/auth/sso/exchange', { code }, { cookie: true }));
    } catch (error) {
        console.warn('sign-in code refused:', error.message);
    }
}

/** My account: the providers linked, unlink each; link the others. */
export function MyIdentities() {
    const notify = useNotify();
    const [linked, setLinked] = useState([]);
    const [offered, setOffered] = useState([]);
    const load = () =>
        call('/users/me/identities').then(
            ({ json }) => setLinked(json),
            (error) => notify(error.message, { type: 'error' })
        );
    useEffect(() => {
        load();
        providers().then(setOffered, () => setOffered([]));
    }, []);
    const link = async (slug) => {
        try {
            const back = encodeURIComponent(`${HOME}#/my-account`);
            const { json } = await call(`/users/me/identities/${slug}?return_to=${back}`, {
                method: 'POST',
            });
            window.location.assign(json.authorization_url);
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    const unlink = async (identity) => {
        try {
            await call(`/users/me/identities/${identity.id}`, { method: 'DELETE' });
            notify(`${identity.provider} unlinked`, { type: 'info' });
            load();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    if (offered.length === 0 && linked.length === 0) return null;
    return (
        <Card>
            <CardHeader title="Sign-in providers" />
            <CardContent>
                <Stack spacing={1}>
                    {linked.map((identity) => (
                        <Stack key={identity.id} direction="row" spacing={2} alignItems="center">
                            <span data-testid="identity">
                                {identity.provider}: {identity.email || identity.subject}
                            </span>
                            <Button size="small" onClick={() => unlink(identity)}>
                                Unlink
                            </Button>
                        </Stack>
                    ))}
                    <Stack direction="row" spacing={1}>
                        {offered.map((provider) => (
                            <Button key={provider.slug} variant="outlined" onClick={() => link(provider.slug)}>
                                Link {provider.name}
                            </Button>
                        ))}
                    </Stack>
                </Stack>
            </CardContent>
        </Card>
    );
}
