"""The lake: the Spark session, Delta reads and writes, the run ledger, window ranks, and the spark-submit entry."""
