import { defineConfig } from 'vite';

// Django serves frontend/dist at /static/app/ and returns dist/index.html for /app/ and /app/*.
export default defineConfig({
  base: '/static/app/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 6000,
    rollupOptions: {
      output: {
        // Cornerstone3D breaks when its modules are split across chunks in production builds.
        manualChunks: (id) => (id.includes('@cornerstonejs') || id.includes('@kitware') ? 'cornerstone' : undefined),
      },
    },
  },
  worker: { format: 'es' },
  test: {
    include: ['src/**/*.test.js', 'test/**/*.test.js'],
    environment: 'node',
  },
});
