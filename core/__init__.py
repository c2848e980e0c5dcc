"""The pieces every layer uses, and nothing else: the bottom of the house.

  errors    UserError, the one exception for what the user can fix
  options   config fields (`option`), validation, JSON of a config
  files     atomic writes (a crash never leaves a half-written output)
  locks     one writer per output folder (flock, naming the holder)
  leases    the same lock where flock does not exist (object stores, FUSE mounts)
  holders   who holds a lock or lease, and the refusal that names them
  watchdog  a process that makes no progress for too long says where it waits, and exits
  progress  the progress bar of long loops (items and items/s)
  names     the input layout's file names (mask suffix, image extensions)

Standard library and absl only: the builder's worker processes and every `--help` import
these without TensorFlow. Nothing here imports `preprocessing`, `pipeline`, `model` or
`launch`.
"""
