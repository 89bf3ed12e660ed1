"""The download stage: a URI (HTTP, object store, local path) in, its bytes probed and its audio
extracted, one `sources` row out. stage.py is the stage; http.py and object_store.py fetch."""
