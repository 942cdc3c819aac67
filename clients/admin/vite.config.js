import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// Built for /admin, where `backend serve` serves it; `npm run dev` serves the same path.
// 127.0.0.1 rather than localhost: the same site as the API's default address, so the
// SameSite=Strict refresh cookie travels between them.
export default defineConfig({
    base: '/admin/',
    plugins: [react()],
    server: { host: '127.0.0.1', port: 5173, strictPort: true },
    preview: { host: '127.0.0.1', port: 4173, strictPort: true },
    build: { chunkSizeWarningLimit: 2000 },
});
