"""Developer and operator tooling: the local cluster (`dilaserve up`), load generator, soak and chaos runs."""
