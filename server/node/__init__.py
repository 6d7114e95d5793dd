"""The node daemon: NodeService (GetFeatures, ValidateImage, WatchFeatures) over the cached probe round, its
first round, and the LeaseKeeper that registers the node with a fleet aggregator.
"""
