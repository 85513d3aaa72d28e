"""Stage 4, serving: the exact top-K kernel and the Spark pandas UDF that scores every user into the
Delta ``recommendations`` table (the score stage)."""
