"""Building blocks that method plugins compose: outlier regularisers and image sources, boundary and invariant
sampling, feature queues, the text-conditioned latent space, post-hoc scorers, CIDER, cVPN, flows and the flow
paper's outlier synthesis, and the shared base of the two pixel-synthesis plugins."""
