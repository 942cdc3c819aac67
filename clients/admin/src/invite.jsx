// Invitations (admin): invite a colleague by email, name and role; the API makes the
// account (inactive, no password) and mails its owner a link to choose one. Re-sending
// from the user's page mails a new link and revokes the previous one.
import { useState } from 'react';
import EmailOutlinedIcon from '@mui/icons-material/EmailOutlined';
import { Card, CardContent, Typography } from '@mui/material';
import {
    Button,
    Form,
    SaveButton,
    SelectInput,
    TextInput,
    Title,
    email,
    maxLength,
    required,
    useNotify,
    useRecordContext,
    useRefresh,
} from 'react-admin';
import { Link as RouterLink, useNavigate } from 'react-router-dom';

import { call } from './api';
import { ROLES } from './users';

export const INVITE_PATH = '/invite';

/**
 * What the API shows of an invitation not accepted yet: the account is inactive and its
 * address unverified (accepting activates and verifies it). An account an admin made
 * with a password and deactivated before it was verified looks the same; re-sending to
 * it is refused (409) with the API's reason.
 */
export function invitationPending(user) {
    return Boolean(user) && !user.is_active && !user.is_verified;
}

/** The users list's filter for those accounts. */
export const PENDING_FILTER = { is_active: false, is_verified: false };

export function InviteButton() {
    return <Button component={RouterLink} to={INVITE_PATH} label="Invite" startIcon={<EmailOutlinedIcon />} />;
}

export function InviteUser() {
    const notify = useNotify();
    const navigate = useNavigate();
    const invite = async values => {
        try {
            const { json: user } = await call('/users/invite', { method: 'POST', body: JSON.stringify(values) });
            notify(`Invitation mailed to ${user.email}`, { type: 'info' });
            navigate(`/users/${user.id}/show`);
        } catch (error) {
            notify(error.message, { type: 'error' });
            // A 422 names its fields (a 409 the taken email): shown under the inputs.
            if (error.status === 409) return { email: error.message };
            return error.body?.errors;
        }
    };
    return (
        <Card sx={{ mt: 2 }}>
            <Title title="Invite a user" />
            <CardContent>
                <Typography variant="body2" sx={{ mb: 2 }}>
                    The account is made inactive, without a password; its owner gets a link by
                    mail to choose one, which activates it.
                </Typography>
                <Form defaultValues={{ role: 'user' }} onSubmit={invite}>
                    <TextInput source="email" validate={[required(), email()]} />
                    <TextInput source="name" validate={[required(), maxLength(100)]} />
                    <SelectInput source="role" choices={ROLES} validate={required()} />
                    <SaveButton label="Send invitation" icon={<EmailOutlinedIcon />} />
                </Form>
            </CardContent>
        </Card>
    );
}

/** On an invited user's page: a new link by mail, the previous one revoked. */
export function ResendInvitationButton() {
    const user = useRecordContext();
    const notify = useNotify();
    const refresh = useRefresh();
    const [sending, setSending] = useState(false);
    if (!invitationPending(user)) return null;
    const resend = async () => {
        setSending(true);
        try {
            await call(`/users/${encodeURIComponent(user.id)}/invite`, { method: 'POST' });
            notify(`A new invitation was mailed to ${user.email}; the previous link no longer works`, {
                type: 'info',
            });
            refresh();
        } catch (error) {
            notify(error.message, { type: 'error' });
        } finally {
            setSending(false);
        }
    };
    return <Button label="Re-send invitation" onClick={resend} disabled={sending} startIcon={<EmailOutlinedIcon />} />;
}
