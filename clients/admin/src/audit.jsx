import {
    Datagrid,
    DateField,
    DateInput,
    FunctionField,
    List,
    NumberInput,
    ReferenceField,
    SelectField,
    SelectInput,
    TextField,
} from 'react-admin';

// backend/models.py AuditAction
export const ACTIONS = [
    { id: 'user.create', name: 'created' },
    { id: 'user.update', name: 'updated' },
    { id: 'user.role_change', name: 'role changed' },
    { id: 'user.deactivate', name: 'deactivated' },
    { id: 'user.activate', name: 'activated' },
    { id: 'user.delete', name: 'deleted' },
    { id: 'user.session_end', name: 'session ended' },
    { id: 'user.sessions_end_all', name: 'all sessions ended' },
    { id: 'user.link_issue', name: 'link mailed' },
    { id: 'user.link_use', name: 'link used' },
    { id: 'user.api_key_create', name: 'API key created' },
    { id: 'user.api_key_revoke', name: 'API key revoked' },
    { id: 'webhook.create', name: 'webhook created' },
    { id: 'webhook.update', name: 'webhook changed' },
    { id: 'webhook.delete', name: 'webhook deleted' },
    { id: 'webhook.disable', name: 'webhook disabled after failing' },
];

const auditFilters = [
    <NumberInput key="actor" source="actor_id" label="Actor id" alwaysOn />,
    <NumberInput key="target" source="target_id" label="Target id" alwaysOn />,
    <SelectInput key="action" source="action" choices={ACTIONS} alwaysOn />,
    // A day's start, in UTC, as the server reads a date without a time.
    <DateInput key="from" source="created_at_gte" label="From (UTC)" alwaysOn />,
    <DateInput key="before" source="created_at_lte" label="Before (UTC)" alwaysOn />,
];

function describe(details) {
    if (!details || Object.keys(details).length === 0) return '';
    return Object.entries(details)
        .map(([key, value]) => `${key}: ${Array.isArray(value) ? value.join(', ') : JSON.stringify(value)}`)
        .join('; ');
}

// Accounts deleted since stay in the trail by id; the reference shows their email while
// they exist.
export function AuditList() {
    return (
        <List filters={auditFilters} sort={{ field: 'created_at', order: 'DESC' }} title="Audit trail">
            <Datagrid bulkActionButtons={false} rowClick={false}>
                <TextField source="id" />
                <DateField source="created_at" label="When" showTime />
                <ReferenceField source="actor_id" reference="users" label="Actor" link="show" emptyText="(system)" />
                <SelectField source="action" choices={ACTIONS} />
                <ReferenceField source="target_id" reference="users" label="Target" link="show" />
                <FunctionField label="Details" render={event => describe(event.details)} />
            </Datagrid>
        </List>
    );
}
