"""The report email, pure: a period's figures and store file in, message bytes out
(`build`; its data types in `types`, its presentation in `view`, the store's summary in
`summary`).
"""
