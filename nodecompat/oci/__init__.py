"""OCI registry client: resolve images, find and fetch compatibility artifacts, attach them."""
