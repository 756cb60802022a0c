"""Human data: registered sources (one module each: ``hf``, ``text``, ``synthetic``) and
tokenising into blocks with provenance (:mod:`lmcollapse.data.blocks`)."""
