"""Batched image ops on the device, below clustering and detection: masks (RISE grids, sliding
occluders, fills, activation maps) and random occlusion boxes."""
