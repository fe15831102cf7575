"""The hot loop and the one commit point (`pipeline`), and the checkpoint it commits
(`checkpoint`). Synchronous: driven by the service's event loop or by `rotate`.
"""
