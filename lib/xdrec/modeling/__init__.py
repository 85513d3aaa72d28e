"""Stage 2, the models: plain ``torch.nn.Module``s, the transfer methods' objectives and phases, and
the ranking kernels and metrics that measure them. No Spark, no Horovod, no Delta."""
