"""The stages of a round, one module each; every stage is a plain function of explicit
inputs (the config sections it uses, the artifacts it reads) that writes its outputs into
the round directory atomically."""
