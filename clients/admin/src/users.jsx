import {
    BooleanField,
    BooleanInput,
    Button,
    Create,
    CreateButton,
    Datagrid,
    DateField,
    DeleteButton,
    Edit,
    EmailField,
    ExportButton,
    FilterButton,
    FunctionField,
    List,
    NullableBooleanInput,
    PasswordInput,
    SaveButton,
    SearchInput,
    SelectField,
    SelectInput,
    Show,
    SimpleForm,
    SimpleShowLayout,
    TextField,
    TextInput,
    Toolbar,
    TopToolbar,
    email,
    maxLength,
    required,
    useListContext,
    usePermissions,
} from 'react-admin';

import { InviteButton, PENDING_FILTER, ResendInvitationButton, invitationPending } from './invite';
import { UserApiKeys } from './keys';
import { UserMfa } from './mfa';
import { UserSessions } from './sessions';
import { BanControls, ImpersonateButton, banInForce } from './support';

export const ROLES = [
    { id: 'user', name: 'User' },
    { id: 'admin', name: 'Admin' },
];

// The server's rules, checked again there (names 1-100 characters, passwords 12+).
const validateName = [required(), maxLength(100)];
const validateEmail = [required(), email()];

const userFilters = [
    <SearchInput key="q" source="q" alwaysOn placeholder="Search email or name" />,
    <SelectInput key="role" source="role" choices={ROLES} />,
    <NullableBooleanInput key="is_active" source="is_active" label="Active" />,
    <NullableBooleanInput key="is_verified" source="is_verified" label="Verified" />,
];
// Who is banned is for admins only (the API refuses the filter to others).
const adminUserFilters = [
    ...userFilters,
    <NullableBooleanInput key="banned" source="banned" label="Banned" />,
];

// Invitations not accepted yet, as the API shows them (see invite.jsx).
function PendingInvitationsButton() {
    const { setFilters } = useListContext();
    return <Button label="Pending invitations" onClick={() => setFilters(PENDING_FILTER, {})} />;
}

// Accounts whose owner asked for their deletion (ACCOUNT_DELETION=grace): every other
// account has no date there, and matches no range.
const SCHEDULED_FILTER = { deletion_scheduled_at_gte: '1970-01-01T00:00:00Z' };

function ScheduledDeletionsButton() {
    const { setFilters } = useListContext();
    return <Button label="Scheduled deletions" onClick={() => setFilters(SCHEDULED_FILTER, {})} />;
}

function UserListActions() {
    const { permissions } = usePermissions();
    const admin = permissions === 'admin';
    return (
        <TopToolbar>
            <FilterButton />
            {admin ? <PendingInvitationsButton /> : null}
            {admin ? <ScheduledDeletionsButton /> : null}
            {admin ? <CreateButton /> : null}
            {admin ? <InviteButton /> : null}
            <ExportButton />
        </TopToolbar>
    );
}

function status(user) {
    if (banInForce(user)) return 'banned';
    if (user.deletion_scheduled_at) return 'deletion scheduled';
    if (invitationPending(user)) return 'invited';
    return user.is_active ? 'active' : 'inactive';
}

export function UserList() {
    const { permissions } = usePermissions();
    return (
        <List filters={permissions === 'admin' ? adminUserFilters : userFilters} actions={<UserListActions />} sort={{ field: 'id', order: 'ASC' }}>
            <Datagrid rowClick="show" bulkActionButtons={false}>
                <TextField source="id" />
                <EmailField source="email" />
                <TextField source="name" />
                <SelectField source="role" choices={ROLES} />
                <BooleanField source="is_active" label="Active" />
                <BooleanField source="is_verified" label="Verified" />
                <FunctionField label="Status" sortable={false} render={status} />
                <DateField source="created_at" showTime />
            </Datagrid>
        </List>
    );
}

export function UserShow() {
    const { permissions } = usePermissions();
    return (
        <Show>
            <SimpleShowLayout>
                <TextField source="id" />
                <EmailField source="email" />
                <TextField source="name" />
                <SelectField source="role" choices={ROLES} />
                <BooleanField source="is_active" label="Active" />
                <BooleanField source="is_verified" label="Verified" />
                <FunctionField label="Status" render={status} />
                <DateField source="created_at" showTime />
                <DateField source="updated_at" showTime />
                <DateField source="deletion_scheduled_at" label="Deleted from" showTime emptyText="not scheduled" />
                {permissions === 'admin' ? <ResendInvitationButton /> : null}
                {permissions === 'admin' ? <BanControls /> : null}
                {permissions === 'admin' ? <ImpersonateButton /> : null}
                {permissions === 'admin' ? <UserSessions /> : null}
                {permissions === 'admin' ? <UserApiKeys /> : null}
                {permissions === 'admin' ? <UserMfa /> : null}
            </SimpleShowLayout>
        </Show>
    );
}

// Pessimistic: the save waits for the server, so a refused one (a concurrent edit: 412)
// leaves the form as it is, with the reason shown, instead of being undone later.
function EditToolbar() {
    return (
        <Toolbar sx={{ justifyContent: 'space-between' }}>
            <SaveButton />
            <DeleteButton mutationMode="pessimistic" />
        </Toolbar>
    );
}

export function UserEdit() {
    return (
        <Edit mutationMode="pessimistic" redirect="show">
            <SimpleForm toolbar={<EditToolbar />}>
                <TextInput source="email" validate={validateEmail} />
                <TextInput source="name" validate={validateName} />
                <SelectInput source="role" choices={ROLES} validate={required()} />
                <BooleanInput source="is_active" label="Active" />
                <PasswordInput source="password" label="New password (optional)" />
            </SimpleForm>
        </Edit>
    );
}

export function UserCreate() {
    return (
        <Create redirect="show">
            <SimpleForm defaultValues={{ role: 'user', is_active: true }}>
                <TextInput source="email" validate={validateEmail} />
                <TextInput source="name" validate={validateName} />
                <PasswordInput source="password" validate={required()} />
                <SelectInput source="role" choices={ROLES} validate={required()} />
                <BooleanInput source="is_active" label="Active" />
            </SimpleForm>
        </Create>
    );
}
