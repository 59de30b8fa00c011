"""Few-step distillation of the causal multi-shot DiT (CausalCine §3.4): ODE initialisation
and distribution matching distillation (DMD / DMD2, Self-Forcing's rollouts)."""
