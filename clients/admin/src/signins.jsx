// The sign-in history: everyone's (admins, a list screen) and your own (My account).
import {
    Datagrid,
    DateField,
    DateInput,
    List,
    ListContextProvider,
    NumberInput,
    ReferenceField,
    ResourceContextProvider,
    SelectField,
    SelectInput,
    TextField,
    TextInput,
    useGetList,
    useList,
} from 'react-admin';

// backend/models.py AuthEventKind
export const KINDS = [
    { id: 'login_succeeded', name: 'logged in' },
    { id: 'login_failed', name: 'login failed' },
    { id: 'refresh_failed', name: 'refresh failed' },
    { id: 'logout', name: 'logged out' },
    { id: 'registered', name: 'registered' },
    { id: 'rate_limited', name: 'rate limited' },
];
const NEWEST_FIRST = { field: 'id', order: 'DESC' };

const filters = [
    <NumberInput key="user" source="user_id" label="User id" alwaysOn />,
    <SelectInput key="kind" source="kind" choices={KINDS} alwaysOn />,
    <TextInput key="ip" source="ip_address" label="Address" alwaysOn />,
    <TextInput key="email" source="email_like" label="Email contains" />,
    // A day's start, in UTC, as the server reads a date without a time.
    <DateInput key="from" source="created_at_gte" label="From (UTC)" alwaysOn />,
    <DateInput key="before" source="created_at_lte" label="Before (UTC)" alwaysOn />,
];

// Accounts deleted since stay in the history by id; the reference shows their email
// while they exist.
export function SignInList() {
    return (
        <List filters={filters} sort={NEWEST_FIRST} title="Sign-in history">
            <Datagrid bulkActionButtons={false} rowClick={false}>
                <DateField source="created_at" label="When" showTime />
                <SelectField source="kind" choices={KINDS} />
                <ReferenceField source="user_id" reference="users" label="User" link="show" emptyText="—" />
                <TextField source="email" label="Email sent" emptyText="" />
                <TextField source="reason" emptyText="" />
                <TextField source="ip_address" label="Address" />
                <TextField source="user_agent" label="Client" />
            </Datagrid>
        </List>
    );
}

function MySignInRows() {
    const { data = [], isPending, error } = useGetList('users/me/sign-ins', {
        pagination: { page: 1, perPage: 20 },
        sort: NEWEST_FIRST,
    });
    const listContext = useList({ data, isPending });
    if (error) return <p role="alert">{error.message}</p>;
    if (!isPending && data.length === 0) return <p>No sign-ins yet.</p>;
    return (
        <ListContextProvider value={listContext}>
            <Datagrid bulkActionButtons={false} rowClick={false}>
                <DateField source="created_at" label="When" showTime />
                <SelectField source="kind" choices={KINDS} />
                <TextField source="reason" emptyText="" />
                <TextField source="ip_address" label="Address" />
                <TextField source="user_agent" label="Client" />
            </Datagrid>
        </ListContextProvider>
    );
}

// Your 20 most recent: its own resource, as the session tables are.
export function MySignIns() {
    return (
        <ResourceContextProvider value="users/me/sign-ins">
            <MySignInRows />
        </ResourceContextProvider>
    );
}
