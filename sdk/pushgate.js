// pushgate browser SDK (placeholder; the module follows in the next commit)
