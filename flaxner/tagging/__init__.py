"""Tagging in parts: `checks` (the TagConfig and label maps accepted), `forward` (the compiled forward, its batch
shapes and compiles), `pipeline` (tokenize on a thread, pack, forward, entities in input order), `filejob` (one
file in, one file out, resumable). `flaxner.tagger.Tagger` puts them together; aggregation is `flaxner.windows`."""
