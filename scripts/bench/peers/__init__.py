"""The peer systems the CPU benchmark compares against; they run in their own environment (make_peer_env.sh)."""
