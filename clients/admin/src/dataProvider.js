// The stock ra-data-simple-rest provider against /api/v1 (range=[0,24],
// sort=["name","ASC"], filter={...}, the total from Content-Range), with two additions:
// an edit is saved with the version it was read at (If-Match), so a concurrent change
// is refused with 412 instead of being overwritten; and deletes of sessions, which
// answer 204 with no body.
import simpleRestProvider from 'ra-data-simple-rest';

import { API_URL, httpClient } from './api';

const stock = simpleRestProvider(API_URL, httpClient);

// The version a record was read at travels with it, so the form that shows the record
// saves exactly that version.
const VERSION = '_etag';

function withoutVersion(record) {
    const { [VERSION]: _, ...rest } = record;
    return rest;
}

function ifMatch(previous) {
    return previous?.[VERSION] ? { 'If-Match': previous[VERSION] } : {};
}

function url(resource, id) {
    return `${API_URL}/${resource}/${encodeURIComponent(id)}`;
}

export const dataProvider = {
    ...stock,

    async getOne(resource, params) {
        const { json, headers } = await httpClient(url(resource, params.id));
        const etag = headers.get('ETag');
        return { data: etag ? { ...json, [VERSION]: etag } : json };
    },

    // The whole record, as read, with the form's changes: PUT. updated_at is left out,
    // so the If-Match version alone decides whether the record changed meanwhile.
    async update(resource, params) {
        const { updated_at: _, ...data } = withoutVersion(params.data);
        const { json, headers } = await httpClient(url(resource, params.id), {
            method: 'PUT',
            headers: ifMatch(params.previousData),
            body: JSON.stringify(data),
        });
        const etag = headers.get('ETag');
        return { data: etag ? { ...json, [VERSION]: etag } : json };
    },

    async delete(resource, params) {
        const { json } = await httpClient(url(resource, params.id), {
            method: 'DELETE',
            headers: ifMatch(params.previousData),
        });
        return { data: json ?? params.previousData ?? { id: params.id } };
    },
};
