// The stock data providers of react-admin and Refine, driven through their public
// methods against a live server, as a dashboard drives them. run.sh starts the server
// and sets API_URL, ADMIN_EMAIL and ADMIN_PASSWORD (through ../with-api.sh).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { before, describe, test } from 'node:test';

import refineDataProvider, { axiosInstance } from '@refinedev/simple-rest';
import { fetchUtils } from 'ra-core';
import jsonServerProvider from 'ra-data-json-server';
import simpleRestProvider from 'ra-data-simple-rest';

const { API_URL, ADMIN_EMAIL, ADMIN_PASSWORD } = process.env;
assert.ok(
    API_URL && ADMIN_EMAIL && ADMIN_PASSWORD,
    'set API_URL, ADMIN_EMAIL and ADMIN_PASSWORD (run.sh does)'
);

const PUBLIC_FIELDS = [
    'app_metadata',
    'ban_reason',
    'banned_at',
    'banned_until',
    'created_at',
    'deletion_scheduled_at',
    'email',
    'id',
    'is_active',
    'is_verified',
    'last_login_at',
    'name',
    'role',
    'updated_at',
    'user_metadata',
];
// The users list adds, for admins, how each user signs in.
const LIST_FIELDS = [...PUBLIC_FIELDS, 'sign_in_methods'].sort();
const PASSWORD = 'Dashboard-Pass-1';
// Capitalised and starting with different letters: one order under any collation.
const PEOPLE = [
    { first: 'Xavier', role: 'user' },
    { first: 'Yolanda', role: 'admin' },
    { first: 'Zed', role: 'user' },
];

// react-admin's documented way to authenticate: fetchJson sends `user.token` as the
// Authorization header.
function reactAdminHttpClient(accessToken) {
    return (url, options = {}) =>
        fetchUtils.fetchJson(url, {
            ...options,
            user: { authenticated: true, token: `Bearer ${accessToken}` },
        });
}

// One shape over the two APIs, so that the same scenario runs for every provider.
function reactAdmin(provider) {
    return {
        getList: ({ page, perPage, order, filter }) =>
            provider.getList('users', {
                pagination: { page, perPage },
                sort: { field: 'name', order },
                filter,
            }),
        getOne: id => provider.getOne('users', { id }),
        getMany: ids => provider.getMany('users', { ids }),
        create: data => provider.create('users', { data }),
        // An edit form saves the whole record it read, with the user's changes (a PUT).
        update: (previous, changes) =>
            provider.update('users', {
                id: previous.id,
                data: { ...previous, ...changes },
                previousData: previous,
            }),
        delete: previous => provider.delete('users', { id: previous.id, previousData: previous }),
        statusOf: error => error.status,
    };
}

function refine(provider) {
    return {
        getList: ({ page, perPage, order, filter }) =>
            provider.getList({
                resource: 'users',
                pagination: { currentPage: page, pageSize: perPage },
                sorters: [{ field: 'name', order: order.toLowerCase() }],
                filters: Object.entries(filter).map(([field, value]) => ({
                    field,
                    operator: 'eq',
                    value,
                })),
            }),
        getOne: id => provider.getOne({ resource: 'users', id }),
        getMany: ids => provider.getMany({ resource: 'users', ids }),
        create: data => provider.create({ resource: 'users', variables: data }),
        // useForm sends the values of the form's fields (a PATCH), not the read-only ones.
        update: (previous, changes) => {
            const { email, name, role, is_active } = { ...previous, ...changes };
            return provider.update({
                resource: 'users',
                id: previous.id,
                variables: { email, name, role, is_active },
            });
        },
        delete: previous => provider.deleteOne({ resource: 'users', id: previous.id }),
        // Refine's own axios instance maps failures to { statusCode, message }.
        statusOf: error => error.statusCode,
    };
}

const PROVIDERS = {
    'ra-data-simple-rest': accessToken =>
        reactAdmin(simpleRestProvider(API_URL, reactAdminHttpClient(accessToken))),
    'ra-data-json-server': accessToken =>
        reactAdmin(jsonServerProvider(API_URL, reactAdminHttpClient(accessToken))),
    '@refinedev/simple-rest': accessToken => {
        axiosInstance.defaults.headers.common.Authorization = `Bearer ${accessToken}`;
        return refine(refineDataProvider(API_URL, axiosInstance));
    },
};

async function logIn() {
    const response = await fetch(`${API_URL}/auth/login`, {
        method: 'POST',
        body: new URLSearchParams({ username: ADMIN_EMAIL, password: ADMIN_PASSWORD }),
    });
    const body = await response.json();
    assert.equal(response.status, 200, JSON.stringify(body));
    return body.access_token;
}

function publicFields(record) {
    return Object.fromEntries(PUBLIC_FIELDS.map(field => [field, record[field]]));
}

const namesOf = ({ data }) => data.map(user => user.name.split(' ')[0]);

let accessToken;
before(async () => {
    accessToken = await logIn();
});

for (const [providerName, makeApi] of Object.entries(PROVIDERS)) {
    describe(providerName, () => {
        // In every email and name, and what `q` looks for: rows from other runs and
        // other providers never match.
        const tag = `t${randomBytes(5).toString('hex')}`;
        const created = {};
        let api;

        before(() => {
            api = makeApi(accessToken);
        });

        test('create: three users, and a duplicate email is refused', async () => {
            for (const { first, role } of PEOPLE) {
                const { data } = await api.create({
                    email: `${first}.${tag}@Dashboards.test`,
                    name: `${first} ${tag}`,
                    password: PASSWORD,
                    role,
                    is_active: true,
                });
                assert.equal(typeof data.id, 'number');
                assert.equal(data.email, `${first.toLowerCase()}.${tag}@dashboards.test`);
                assert.equal(data.role, role);
                created[first] = publicFields(data);
            }
            await assert.rejects(
                api.create({
                    email: `xavier.${tag}@dashboards.test`,
                    name: 'Again',
                    password: PASSWORD,
                }),
                // The dashboards show an error's `message`: ours is the problem's detail.
                error =>
                    api.statusOf(error) === 409 &&
                    error.message === 'A user with this email already exists.'
            );
        });

        test('getList: two per page, sorted by name both ways, with the total', async () => {
            const page = (number, order) =>
                api.getList({ page: number, perPage: 2, order, filter: { q: tag } });
            const ascending = [await page(1, 'ASC'), await page(2, 'ASC')];
            assert.deepEqual(ascending.map(namesOf), [['Xavier', 'Yolanda'], ['Zed']]);
            const descending = [await page(1, 'DESC'), await page(2, 'DESC')];
            assert.deepEqual(descending.map(namesOf), [['Zed', 'Yolanda'], ['Xavier']]);
            for (const result of [...ascending, ...descending]) {
                assert.equal(result.total, 3);
            }
            assert.deepEqual(Object.keys(ascending[0].data[0]).sort(), LIST_FIELDS);
            assert.deepEqual(publicFields(ascending[0].data[0]), created.Xavier);
        });

        test('getList: filtered by q and role', async () => {
            const users = await api.getList({
                page: 1,
                perPage: 10,
                order: 'ASC',
                filter: { q: tag, role: 'user' },
            });
            assert.deepEqual(namesOf(users), ['Xavier', 'Zed']);
            assert.equal(users.total, 2);
            const admins = await api.getList({
                page: 1,
                perPage: 10,
                order: 'ASC',
                filter: { q: `yolanda.${tag}`, role: 'admin' },
            });
            assert.deepEqual(namesOf(admins), ['Yolanda']);
            assert.equal(admins.total, 1);
        });

        test('getOne: the record as created, and nothing more', async () => {
            const { data } = await api.getOne(created.Yolanda.id);
            assert.deepEqual(data, created.Yolanda);
        });

        test('getMany: the records asked for', async () => {
            const { data } = await api.getMany([created.Zed.id, created.Xavier.id]);
            const byId = (left, right) => left.id - right.id;
            assert.deepEqual(
                data.map(publicFields).sort(byId),
                [created.Xavier, created.Zed].sort(byId)
            );
        });

        test('update: rename and deactivate', async () => {
            const previous = created.Xavier;
            const changes = { name: `Xavier ${tag} edited`, is_active: false };
            const { data } = await api.update(previous, changes);
            assert.deepEqual(
                { ...data, updated_at: previous.updated_at },
                { ...previous, ...changes }
            );
            assert.ok(Date.parse(data.updated_at) > Date.parse(previous.updated_at));
            assert.deepEqual((await api.getOne(previous.id)).data, data);
        });

        test('delete: returns the deleted record, which is then gone', async () => {
            const { data } = await api.delete(created.Zed);
            assert.deepEqual(data, created.Zed);
            const rest = await api.getList({ page: 1, perPage: 2, order: 'ASC', filter: { q: tag } });
            assert.equal(rest.total, 2);
            assert.deepEqual(namesOf(rest), ['Xavier', 'Yolanda']);
            await assert.rejects(api.getOne(created.Zed.id), error => api.statusOf(error) === 404);
        });

        // A reference column on a 25-row list page asks for up to 25 ids at once.
        test(
            'getMany: more ids than one default page',
            async () => {
                const ids = [];
                for (let number = 10; number < 21; number += 1) {
                    const { data } = await api.create({
                        email: `many${number}.${tag}@dashboards.test`,
                        name: `Many ${number} ${tag}`,
                        password: PASSWORD,
                    });
                    ids.push(data.id);
                }
                const { data } = await api.getMany(ids);
                assert.deepEqual(
                    data.map(user => user.id).sort((a, b) => a - b),
                    ids
                );
            }
        );
    });
}

// react-admin's stock Export button asks its data provider for one page of up to 1,000
// records (maxResults); Refine's export hooks page the same way.
const EXPORT_PAGE = 1000;
const EXPORTED = EXPORT_PAGE + 5;
const SEEDING_AT_ONCE = 16;

describe('Export: 1,000 records in one request', () => {
    const tag = `x${randomBytes(5).toString('hex')}`;
    // Zero-padded: sorted by name, the order is the numbers' under any collation.
    const nameOf = number => `Export ${String(number).padStart(4, '0')} ${tag}`;

    before(async () => {
        // Straight through the API, many at once: run.sh turns rate limits off.
        const create = number =>
            fetch(`${API_URL}/users`, {
                method: 'POST',
                headers: {
                    Authorization: `Bearer ${accessToken}`,
                    'Content-Type': 'application/json',
                },
                body: JSON.stringify({
                    email: `export${number}.${tag}@dashboards.test`,
                    name: nameOf(number),
                    password: PASSWORD,
                }),
            }).then(response => assert.equal(response.status, 201));
        for (let start = 0; start < EXPORTED; start += SEEDING_AT_ONCE) {
            const end = Math.min(start + SEEDING_AT_ONCE, EXPORTED);
            const batch = [];
            for (let number = start; number < end; number += 1) {
                batch.push(create(number));
            }
            await Promise.all(batch);
        }
    });

    for (const [providerName, makeApi] of Object.entries(PROVIDERS)) {
        test(`${providerName}: a page of ${EXPORT_PAGE}, then the rest`, async () => {
            const api = makeApi(accessToken);
            const page = number =>
                api.getList({
                    page: number,
                    perPage: EXPORT_PAGE,
                    order: 'ASC',
                    filter: { q: tag },
                });
            const first = await page(1);
            assert.equal(first.total, EXPORTED);
            assert.equal(first.data.length, EXPORT_PAGE);
            assert.deepEqual(
                first.data.map(user => user.name),
                Array.from({ length: EXPORT_PAGE }, (_, number) => nameOf(number))
            );
            assert.deepEqual(Object.keys(first.data[0]).sort(), LIST_FIELDS);
            const rest = await page(2);
            assert.deepEqual(
                rest.data.map(user => user.name),
                Array.from({ length: EXPORTED - EXPORT_PAGE }, (_, number) =>
                    nameOf(EXPORT_PAGE + number)
                )
            );
        });
    }
});
