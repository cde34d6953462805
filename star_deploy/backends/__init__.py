"""Runtimes that execute STAR's graphs behind one interface (see base.Backend)."""
