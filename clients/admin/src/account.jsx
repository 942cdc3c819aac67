// My account: your name, your password, your email, your second factor, your passkeys,
// your sessions, your API keys, your data and the account itself; what every user may
// change.
// My account: your name, your password, your sessions, your API keys, your recent
// sign-ins; what every user may change or see.
import { Card, CardContent, CardHeader, Stack } from '@mui/material';
import {
    Form,
    PasswordInput,
    SaveButton,
    TextInput,
    Title,
    maxLength,
    required,
    useGetIdentity,
    useNotify,
} from 'react-admin';

import { call, changePassword } from './api';
import { MyApiKeys } from './keys';
import { MyPasskeys } from './passkeys';
import { SecurityCard } from './mfa';
import { ChangeEmail, DeleteAccount, ExportData } from './ownaccount';
import { SessionTable } from './sessions';
import { MyIdentities } from './sso';
import { MySignIns } from './signins';

function NameForm() {
    const { identity, refetch } = useGetIdentity();
    const notify = useNotify();
    if (!identity) return null;
    const save = async ({ name }) => {
        try {
            await call('/users/me', { method: 'PATCH', body: JSON.stringify({ name }) });
            notify('Name saved', { type: 'info' });
            refetch();
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <Form defaultValues={{ name: identity.fullName }} onSubmit={save}>
            <TextInput source="name" validate={[required(), maxLength(100)]} />
            <SaveButton label="Save name" />
        </Form>
    );
}

function PasswordForm() {
    const notify = useNotify();
    const save = async ({ current_password, new_password }) => {
        try {
            await changePassword(current_password, new_password);
            notify('Password changed; your other sessions have ended', { type: 'info' });
        } catch (error) {
            notify(error.message, { type: 'error' });
        }
    };
    return (
        <Form onSubmit={save}>
            <PasswordInput source="current_password" label="Current password" validate={required()} />
            <PasswordInput source="new_password" label="New password" validate={required()} />
            <SaveButton label="Change password" />
        </Form>
    );
}

export function MyAccount() {
    return (
        <Stack spacing={2} sx={{ mt: 2 }}>
            <Title title="My account" />
            <Card>
                <CardHeader title="Name" />
                <CardContent>
                    <NameForm />
                </CardContent>
            </Card>
            <Card>
                <CardHeader title="Password" />
                <CardContent>
                    <PasswordForm />
                </CardContent>
            </Card>
            <MyIdentities />
            <Card>
                <CardHeader title="Passkeys" />
                <CardContent>
                    <MyPasskeys />
                </CardContent>
            </Card>
            <Card>
                <CardHeader title="Security" />
                <CardContent>
                    <SecurityCard />
                </CardContent>
            </Card>
            <Card>
                <CardHeader title="Email" />
                <CardContent>
                    <ChangeEmail />
                </CardContent>
            </Card>
            <Card>
                <CardHeader title="My sessions" />
                <CardContent>
                    <SessionTable basePath="/users/me/sessions" showCurrent />
                </CardContent>
            </Card>
            <Card>
                <CardHeader title="API keys" />
                <CardContent>
                    <MyApiKeys />
                </CardContent>
            </Card>
            <Card>
                <CardHeader title="Recent sign-ins" />
                <CardContent>
                    <MySignIns />
                </CardContent>
            </Card>
            <Card>
                <CardHeader title="My data" />
                <CardContent>
                    <ExportData />
                </CardContent>
            </Card>
            <Card>
                <CardHeader title="Delete account" />
                <CardContent>
                    <DeleteAccount />
                </CardContent>
            </Card>
        </Stack>
    );
}
