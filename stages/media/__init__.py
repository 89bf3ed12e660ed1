"""Media helpers every stage shares: probe (what is in a file, read_audio), sniff (is it media),
decode and video_io (frames), clock (the frame timeline), crops (crop windows and clip files)."""
