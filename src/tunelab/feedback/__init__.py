"""Human feedback: labelers rank a model's completions in a browser; the rankings
become preference pairs for the reward model (see ``tunelab label --help``)."""
