"""`assembler publish`: the built image into Glance, verified, and its datastore version into
Trove, as the original document has operators do by hand after every build."""
