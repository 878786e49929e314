"""Distributed training: the process world, the device mesh, FSDP2, activation checkpointing and
gradient clipping over sharded gradients. The rest of ov_train imports them from
`ov_train.parallel`."""
