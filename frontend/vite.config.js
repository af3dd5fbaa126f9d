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
        // Cornerstone3D + vtk.js in one chunk: cached apart from the app code, and never split across chunks
        // (split chunks are a known cause of broken Cornerstone3D production builds).
        manualChunks: (id) => (id.includes('@cornerstonejs') || id.includes('@kitware') ? 'cornerstone' : undefined),
      },
    },
  },
  worker: { format: 'es' },
  test: {
    include: ['src/**/*.test.js'],
    environment: 'node',
  },
});
