"""One module per stage, each with `build(node, out, cfg) -> metrics`; `layout` is what stages
share about artifact folders. A stage's code key starts at its module (graph.codeversion)."""
