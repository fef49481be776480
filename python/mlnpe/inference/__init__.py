"""What is done with a trained amortizer: PSIS, HMC refinement, SBC and the other diagnostics."""
