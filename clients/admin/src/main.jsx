import { StrictMode, useState } from 'react';
import { createRoot } from 'react-dom/client';

import { App } from './App';
import { LinkPage, linkPage } from './links';
import { finishSsoSignIn } from './sso';

// A mailed link's page, until it logs its user in; then the dashboard, at its own address
// (the used token leaves the address bar and the history entry with it).
function Root() {
    const [page, setPage] = useState(linkPage);
    if (page === null) return <App />;
    const onLoggedIn = () => {
        window.history.replaceState(null, '', import.meta.env.BASE_URL);
        setPage(null);
    };
    return <LinkPage page={page} onLoggedIn={onLoggedIn} />;
}

// Back from a provider's sign-in, the session first: the dashboard then starts logged in.
finishSsoSignIn().finally(() =>
    createRoot(document.getElementById('root')).render(
        <StrictMode>
            <Root />
        </StrictMode>
    )
);
