"""Stage 3, training: the one training loop, the distributed backend (Horovod inside Spark, reading
Petastorm shards), validation during training, the train stage, its artifacts and tracking."""
