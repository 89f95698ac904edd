module goholdings

go 1.19
