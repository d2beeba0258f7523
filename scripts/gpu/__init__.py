"""The GPU verdict's helpers: preflight, the claims tally, the carried wheels (scripts/gpu_check.sh runs them)."""
