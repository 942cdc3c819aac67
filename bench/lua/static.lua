-- A fixed request (path and headers from the wrk command line): only the summary is added.
dofile("common.lua")
