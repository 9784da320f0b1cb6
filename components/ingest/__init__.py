"""ContractExampleGen: CSV ingestion per the dataset spec."""
