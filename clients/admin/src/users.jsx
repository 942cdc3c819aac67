import {
    BooleanField,
    BooleanInput,
    Create,
    Datagrid,
    DateField,
    DeleteButton,
    Edit,
    EmailField,
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
    email,
    maxLength,
    required,
    usePermissions,
} from 'react-admin';

import { UserApiKeys } from './keys';
import { UserSessions } from './sessions';

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
];

export function UserList() {
    return (
        <List filters={userFilters} sort={{ field: 'id', order: 'ASC' }}>
            <Datagrid rowClick="show" bulkActionButtons={false}>
                <TextField source="id" />
                <EmailField source="email" />
                <TextField source="name" />
                <SelectField source="role" choices={ROLES} />
                <BooleanField source="is_active" label="Active" />
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
                <DateField source="created_at" showTime />
                <DateField source="updated_at" showTime />
                {permissions === 'admin' ? <UserSessions /> : null}
                {permissions === 'admin' ? <UserApiKeys /> : null}
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
