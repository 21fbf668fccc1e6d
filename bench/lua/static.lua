-- The same GET on every request (list page, change-feed page): the URL says which.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
